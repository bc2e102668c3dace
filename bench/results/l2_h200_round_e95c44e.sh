# Session 32's two device calls on e95c44e (NVIDIA H200; each the command given to the device tool, in the repository
# root; bench/device_round.sh builds and self-checks the kernels first and leaves round.tgz):
# 1. the GPU tests (kernel_h200_tests_e95c44e.log), the decode-step profile of every L2 prefetch mode at batch 1, 8 and
#    32, cut short by its limit after the bf16 model's batch 1 (decode_profile_h200_l2_e95c44e.*), and the kernel table
#    with each layer's weights requested into the L2 first (kernel_h200_l2_e95c44e.*; .md: bench/kernel_table.py --l2)
STEPS="tests profile bench" TESTS_LIMIT=130 BENCH_LIMIT=120 PROFILE_LIMIT=280 KERNEL_ARGS="--l2-prefetch --cache clean --groups 128 --ms 1,8,32 --reps 20 --shapes 4096x4096;6144x4096;28672x4096;4096x14336" PROFILES="--compile --fuse --l2-prefetch off,next,next+evict,attention,next+launch,attention+launch" bash bench/device_round.sh $OUT 570
# 2. the modes the first profile did not reach, at batch 1 and 8 (decode_profile_h200_l2b_e95c44e.*; its "quantized"
#    rows are mode next, the first of the list)
STEPS="profile" PROFILE_LIMIT=540 PROFILES="--compile --fuse --batch 1,8 --l2-prefetch next,next+evict,attention,next+launch" bash bench/device_round.sh $OUT 570
# 3. on 457e129 (the working tree sent; the device's commit.txt still read e95c44e): batch 1 and 32, off and attention,
#    with by_linear's shape filter (decode_profile_h200_l2c_457e129.*; cut short by its limit after the bf16 model's
#    batch 1). Its by_kind "other" and kernel_us include inductor's "## Call CompiledFxGraph ##" annotation, a range
#    as long as the whole step (profile_decode leaves such annotations out since c4840b8); its step times and
#    by_linear are not affected. The ncu run after it profiled a self-check kernel (kernel_ncu.py runs the self-check
#    outside the profiled range since then) and is not kept.
STEPS="profile" PROFILE_LIMIT=300 PROFILES="--compile --fuse --batch 1,32 --l2-prefetch off,attention" bash bench/device_round.sh $OUT 355
