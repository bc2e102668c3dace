# Source on a GPU machine before the bench scripts: installs the Python packages the GPU image may lack from
# wheels carried in .whl-eval (only those missing; a package with no wheel there is named and left out) into
# /tmp/site, and puts the repository and /tmp/site on PYTHONPATH.   . bench/device_env.sh
# The wheels (the run tool's carry: [".whl-eval"]), made here for the GPU image's Python 3.12:
#   mkdir -p .whl-eval && cd .whl-eval && pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     --platform any click pyyaml matplotlib contourpy cycler fonttools kiwisolver pyparsing python_dateutil pytest \
#     pluggy iniconfig pygments packaging gguf requests charset_normalizer idna urllib3 certifi
need=() absent=()
for spec in click:click yaml:pyyaml matplotlib:matplotlib contourpy:contourpy cycler:cycler fontTools:fonttools \
            kiwisolver:kiwisolver pyparsing:pyparsing dateutil:python_dateutil pytest:pytest pluggy:pluggy \
            iniconfig:iniconfig pygments:pygments packaging:packaging gguf:gguf requests:requests \
            charset_normalizer:charset_normalizer idna:idna urllib3:urllib3 certifi:certifi; do
  python3 -c "import ${spec%%:*}" 2>/dev/null && continue
  wheels=(.whl-eval/${spec#*:}-*.whl)
  if [ -e "${wheels[0]}" ]; then need+=("${wheels[@]}"); else absent+=("${spec#*:}"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${need[@]}"
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "installed from wheels: ${need[*]:-none}${absent[*]:+; missing, no wheel in .whl-eval: ${absent[*]}}"
