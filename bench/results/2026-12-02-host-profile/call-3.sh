# Call 3: the lean 8-bit step on Qwen3-1.7B (the reference experiment's size), v1 and v2, old (.old/src, bitsandbytes'
# own step) against new (src), alternating, each its own process; the first run of each version warms Triton's cache.
mkdir -p /tmp/site $OUT/old $OUT/new && tar xzf .whl/site.tar.gz -C /tmp/site && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
run() { PYTHONPATH=$PWD/$1:/tmp/site/common python3 bench/gpu_speed.py all --work /tmp/mb --out $OUT/$2 --warmup 3 --steps 8 --stages $3 2>&1 | grep -v '^{' >> $OUT/log.txt; }
run src new prepare:1.7b
for v in v1 v2; do
  run .old/src old multigpu:1.7b:$v:none
  for i in 1 2; do run .old/src old multigpu:1.7b:$v:none; run src new multigpu:1.7b:$v:none; done
done
for d in old new; do PYTHONPATH=$PWD/src python3 bench/gpu_speed.py report --work /tmp/mb --out $OUT/$d > $OUT/report-$d.md; done; cat $OUT/report-old.md $OUT/report-new.md
