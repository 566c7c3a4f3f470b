# Call 4: 1.7B v1 again, new first this time, alternating with old (the device time left allowed four runs).
mkdir -p /tmp/site $OUT/old $OUT/new && tar xzf .whl/site.tar.gz -C /tmp/site && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
run() { PYTHONPATH=$PWD/$1:/tmp/site/common python3 bench/gpu_speed.py all --work /tmp/mb --out $OUT/$2 --warmup 3 --steps 8 --stages $3 2>&1 | grep -v '^{' >> $OUT/log.txt; }
run src new prepare:1.7b
for i in 1 2; do run src new multigpu:1.7b:v1:none; run .old/src old multigpu:1.7b:v1:none; done
for d in old new; do PYTHONPATH=$PWD/src python3 bench/gpu_speed.py report --work /tmp/mb --out $OUT/$d > $OUT/report-$d.md; done; cat $OUT/report-old.md $OUT/report-new.md
