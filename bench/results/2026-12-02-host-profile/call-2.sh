mkdir -p /tmp/site $OUT/old $OUT/new && tar xzf .whl/site.tar.gz -C /tmp/site && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
run() { PYTHONPATH=$PWD/$1:/tmp/site/common python3 bench/gpu_speed.py all --work /tmp/mb --out $OUT/$2 --warmup 3 --steps 6 --stages $3 2>&1 | grep -v '^{' >> $OUT/log.txt; }
run src new prepare:8b
run .old/src old multigpu:8b:v2:none
for i in 1 2; do run .old/src old multigpu:8b:v2:none; run src new multigpu:8b:v2:none; run .old/src old multigpu:8b:v2:none:shares2; run src new multigpu:8b:v2:none:shares2; done
run src new multigpu:8b:v2:none:shares2:hostprofile
for d in old new; do PYTHONPATH=$PWD/src python3 bench/gpu_speed.py report --work /tmp/mb --out $OUT/$d > $OUT/report-$d.md; done; cat $OUT/report-old.md $OUT/report-new.md
