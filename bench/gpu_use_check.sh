#!/usr/bin/env bash
# The use path on a GPU, as a user runs it: train a short v2 run of the tiny model (NF4 through bitsandbytes' CUDA
# kernels), then generate, eval, merge (and compare the merged model's logits with the adapter's), export a GGUF and
# read it back, chat from piped input, and serve (models, a reply, a streamed reply, a bad request).
# Every command's output goes to OUT/<step>.txt; a failed step is reported and the others still run.
#   bash bench/gpu_use_check.sh OUT
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_use_check.sh OUT}
mkdir -p "$OUT"
WORK=$(mktemp -d)
RUN=$WORK/runs/v2
medtune() { python3 -m medtune.cli "$@"; }
step() {  # step NAME COMMAND...: run it, keep its output, say how it went
  local name=$1; shift
  local start=$SECONDS
  if "$@" >"$OUT/$name.txt" 2>&1; then echo "ok    $name ($((SECONDS - start)) s)"; else echo "FAIL  $name (exit $?, $((SECONDS - start)) s): $(tail -n 3 "$OUT/$name.txt" | tr '\n' ' ')"; fi
}

printf '%s\n' '{"question": "头痛三天，伴有低烧，需要去医院吗？"}' '{"question": "孩子咳嗽一周，晚上加重怎么办？"}' \
  '{"messages": [{"role": "user", "content": "高血压患者饮食要注意什么？"}]}' >"$WORK/questions.jsonl"

step train medtune train configs/v2.yaml --overlay configs/tiny.yaml --set output_dir="$WORK/runs" \
  --set train.max_steps=6 --set train.eval_steps=3 --set train.save_steps=3 --set train.logging_steps=1
python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print('device', s['device'], 'optimizer', s['optimizer'], 'model', s['model'])" \
  "$RUN/summary.json" >"$OUT/train-summary.txt" 2>&1
step generate medtune generate "$RUN" --input "$WORK/questions.jsonl" -o "$WORK/answers.jsonl" --max-new-tokens 64 --batch-size 3
cp "$WORK/answers.jsonl" "$OUT/answers.jsonl" 2>/dev/null
step generate-checkpoint medtune generate "$RUN" --checkpoint 3 --input "$WORK/questions.jsonl" -o "$WORK/answers-3.jsonl" --max-new-tokens 16 --greedy
step eval medtune eval "$RUN" --limit 8 --max-new-tokens 64
cp "$RUN/eval.json" "$OUT/eval.json" 2>/dev/null
step merge medtune merge "$RUN" -o "$WORK/merged"
step merged-logits python3 - "$RUN" "$WORK/merged" <<'EOF'
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from medtune.infer.runs import resolve_run, load_for_inference
run, merged = sys.argv[1], sys.argv[2]
loaded = load_for_inference(resolve_run(run))
tokenizer = AutoTokenizer.from_pretrained(merged)
ids = tokenizer("头痛三天，伴有低烧，需要去医院吗？", return_tensors="pt").input_ids
plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).to(loaded.device)
with torch.no_grad():
    a = loaded.model(ids.to(loaded.device)).logits.float().cpu()
    b = plain(ids.to(loaded.device)).logits.float().cpu()
agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
print(f"adapter on {loaded.device} vs merged bf16: max |diff| {(a - b).abs().max().item():.4f} of max |logit| {a.abs().max().item():.2f}; same top token at {agree:.0%} of positions")
EOF
step export medtune export "$RUN" --gguf "$WORK/v2.gguf"
step export-read python3 -c "import gguf,sys; r=gguf.GGUFReader(sys.argv[1]); print(len(r.tensors), 'tensors;', r.fields['general.architecture'].contents())" "$WORK/v2.gguf"
step chat bash -c "printf '头痛怎么办？\n/exit\n' | python3 -m medtune.cli chat '$RUN' --max-new-tokens 32"
python3 -m medtune.cli serve "$RUN" --port 18080 >"$OUT/serve.txt" 2>&1 &
SERVER=$!
for _ in $(seq 120); do curl -sf localhost:18080/v1/models >/dev/null 2>&1 && break; sleep 1; done
step serve-models curl -sf localhost:18080/v1/models
step serve-reply curl -sf localhost:18080/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model": "v2", "messages": [{"role": "user", "content": "头痛怎么办？"}], "max_tokens": 32, "temperature": 0}'
step serve-stream curl -sfN localhost:18080/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model": "v2", "messages": [{"role": "user", "content": "头痛怎么办？"}], "max_tokens": 16, "stream": true, "stream_options": {"include_usage": true}}'
step serve-bad-request bash -c "curl -s -o /dev/stderr -w '%{http_code}' localhost:18080/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\": \"v2\", \"messages\": [], \"temperature\": 9}' | grep -qx 400"
kill "$SERVER"; wait "$SERVER" 2>/dev/null
rm -rf "$WORK"
