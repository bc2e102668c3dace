# Source on a GPU machine before the bench scripts: installs the Python packages the GPU image may lack from
# wheels carried in .whl-eval (only those missing) into /tmp/site, and puts the repository and /tmp/site on
# PYTHONPATH.   . bench/device_env.sh
need=()
for spec in click:click yaml:pyyaml matplotlib:matplotlib contourpy:contourpy cycler:cycler fontTools:fonttools \
            kiwisolver:kiwisolver pyparsing:pyparsing dateutil:python_dateutil pytest:pytest pluggy:pluggy \
            iniconfig:iniconfig pygments:pygments packaging:packaging; do
  python3 -c "import ${spec%%:*}" 2>/dev/null || need+=(.whl-eval/${spec#*:}-*.whl)
done
if [ ${#need[@]} -gt 0 ] && ls "${need[@]}" >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${need[@]}"
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "installed from wheels: ${need[*]:-none}"
