#!/usr/bin/env bash
# The CUDA path, run on a machine with a GPU (CI has none): every command that takes --device cuda,
# checked against the CPU's float32 reference of the same file, plus speed on CUDA.
#   bench/cuda_check.sh MODEL.gguf [OUTDIR]
# Prints what each step gave; a step that fails prints FAIL and the script carries on.
set -u
model=$1
out=${2:-$(mktemp -d)}
mkdir -p "$out"
head -c 8000 README.md >"$out/text.txt"  # ~2,000 tokens
llama=(python3 -m llama_cli)
prompt="The capital of France is"
step() { echo; echo "== $1"; }
check() { if "$@"; then echo "ok" >&2; else echo "FAIL (exit $?): $*" >&2; fi; }

python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

step "generate: cuda (bfloat16) against cpu float32, greedy 24 tokens"
check "${llama[@]}" generate -m "$model" --device cuda -n 24 -t 0 "$prompt" >"$out/cuda.txt"
check "${llama[@]}" generate -m "$model" --device cuda --dtype float32 -n 24 -t 0 "$prompt" >"$out/cuda32.txt"
check "${llama[@]}" generate -m "$model" --device cpu --dtype float32 -n 24 -t 0 "$prompt" >"$out/cpu32.txt"
for f in cuda cuda32 cpu32; do printf '%-7s %s\n' "$f" "$(tr '\n' ' ' <"$out/$f.txt")"; done
cmp -s "$out/cuda32.txt" "$out/cpu32.txt" && echo "cuda float32 == cpu float32" || echo "cuda float32 != cpu float32"

step "perplexity --kl-divergence on cuda (bfloat16 against the float32 reference)"
check "${llama[@]}" perplexity -m "$model" --device cuda --kl-divergence --ctx 512 "$out/text.txt"

step "prompt lookup on cuda repeats plain greedy decoding"
text="Copy this list: alpha beta gamma delta epsilon zeta eta theta. Again: alpha beta gamma delta"
"${llama[@]}" generate -m "$model" --device cuda -n 24 -t 0 "$text" >"$out/plain.txt"
check "${llama[@]}" generate -m "$model" --device cuda -n 24 -t 0 --lookup 8 "$text" >"$out/lookup.txt"
cmp -s "$out/plain.txt" "$out/lookup.txt" && echo "lookup == plain" || { echo "lookup != plain"; cat "$out/plain.txt" "$out/lookup.txt"; }

step "samples, seeds, JSON events on cuda"
check "${llama[@]}" generate -m "$model" --device cuda -n 12 --samples 3 --seed 1 "$prompt"

step "structured output on cuda (--schema)"
check "${llama[@]}" generate -m "$model" --device cuda -n 64 -t 0 --truncate-ok --schema 'name, age int' "Invent a person."

step "chat on cuda (piped)"
printf 'Hello\n/stats\n' | check "${llama[@]}" chat -m "$model" --device cuda -n 16

step "bench on cuda"
check "${llama[@]}" bench -m "$model" --device cuda -p 128 -n 32

step "serve on cuda: 4 concurrent requests"
"${llama[@]}" serve -m "$model" --device cuda --port 8765 2>"$out/serve.err" &
server=$!
python3 - <<'PY'
import concurrent.futures, json, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen("http://127.0.0.1:8765/health", timeout=1); break
    except Exception: time.sleep(0.1)
def ask(i):
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": f"Count to {i + 3}."}], "max_tokens": 16, "temperature": 0}).encode()
    req = urllib.request.Request("http://127.0.0.1:8765/v1/chat/completions", body, {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["message"]["content"]
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    for i, text in enumerate(pool.map(ask, range(4))): print(i, repr(text))
PY
kill -TERM $server; wait $server; echo "serve exit $?"

step "train a tiny model on cuda (20 steps) and generate from it"
check "${llama[@]}" train "$out/text.txt" -o "$out/tiny" --preset tiny --max-steps 20
check "${llama[@]}" generate -m "$out/tiny" --device cuda -n 8 -t 0 "The"

step "a Llama-3.2-1B-shaped model (random weights, F16) on cuda: bench"
python3 -c "from pathlib import Path; from llama_cli.testing_models import write_llama32_1b_shape as w; w(Path('$out/l1b.gguf'))" \
  && check "${llama[@]}" bench -m "$out/l1b.gguf" --device cuda -p 512 -n 64
