#!/bin/bash
# declared before running: schedules of prefix and moderate-fitting chosen on clean dev only (SST-2 BadNets, cpu profile with the main job's 1500 training rows, seed 1;
# test cut to 40 rows so no test number can inform the choice)
cd /tmp/bench-clean
export BENCH_DATA_DIR=/work/shared/data PYTHONPATH=/tmp/bench-clean BENCH_CACHE_DIR=/tmp/mainjob-cache BENCH_THREADS=2
OUT=/tmp/devtune/out
common="-a badnets --dataset sst2 -b minilm -s 1 --set profile.train_size=1500 --set profile.test_size=40 --out $OUT --no-progress"
# lora: results/main-job (same setting, seed 1): best clean dev 0.830
for lr in 3e-4 1e-3 3e-3 1e-2; do python3 -m bench.cli run $common -d moderate-fitting --set moderate-fitting.learning_rate=$lr; done
for lr in 1e-3 5e-3 1e-2 3e-2; do python3 -m bench.cli run $common -d prefix --set prefix.learning_rate=$lr; done
echo DONE
