#!/usr/bin/env bash
# The demo: builds cuoptim's examples, trains the MLP of examples/train_mlp.c with every optimizer
# (on the GPU when there is one, else on the host), prints a table (optimizer, learning rate,
# final loss, test accuracy, time per step), runs examples/paths, and draws the pictures: the loss
# curves of all optimizers and each optimizer's path over the contour lines of four 2-D problems.
#
# On a fresh Debian machine it installs what is missing (scripts/setup.sh, and python3-venv), makes
# a virtual environment of its own (.venv-demo, matplotlib from PyPI), builds only what it needs
# in build-demo/, and writes everything to demo/. Usage:
#   scripts/demo.sh
#   DEMO_EPOCHS=n scripts/demo.sh    epochs per optimizer (default 30)
#   DEMO_DEVICE=host scripts/demo.sh the host model even with a GPU (auto, host or cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
started=$(date +%s)
build=$root/build-demo
out=$root/demo
venv=$root/.venv-demo
epochs=${DEMO_EPOCHS:-30}
device=${DEMO_DEVICE:-auto}
jobs=$(nproc 2>/dev/null || echo 2)

elapsed() { echo $(($(date +%s) - started)); }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

echo "== packages (scripts/setup.sh) =="
bash scripts/setup.sh
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"

# matplotlib goes into a virtual environment of the demo's own, made while the examples build.
make_venv() {
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then return 0; fi
  if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    echo "demo: installing python3-venv"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check matplotlib
}
mkdir -p "$out"
make_venv > "$out/venv.log" 2>&1 &
venv_pid=$!

# One CUDA architecture, the GPU's, when there is a GPU: the library builds faster.
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DCUOPTIM_BUILD_TESTS=OFF -DCUOPTIM_BUILD_EXAMPLES=ON)
if command -v nvidia-smi >/dev/null 2>&1; then
  capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  [ -n "$capability" ] && cmake_args+=(-DCMAKE_CUDA_ARCHITECTURES="$capability")
fi
echo "== build (in build-demo/: cuoptim_static, train_mlp, paths) =="
cmake -S "$root" -B "$build" "${cmake_args[@]}" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
cmake --build "$build" -j "$jobs" --target train_mlp paths >> "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
echo "built in $(elapsed) s"

# The learning rate of each optimizer: Keras's default where it trains well in $epochs epochs,
# else one that does (a user would tune it so), with the other settings it needs.
#   optimizer  learning_rate  Keras's default  extra train_mlp options
runs=(
  "SGD        0.3    0.01   "
  "RMSprop    0.001  0.001  "
  "Adagrad    0.1    0.001  "
  "Adadelta   1.0    0.001  "
  "Adam       0.001  0.001  "
  "AdamW      0.001  0.001  "
  "Adamax     0.005  0.001  "
  "Nadam      0.001  0.001  "
  "Lion       0.001  0.001  "
  "Lamb       0.003  0.001  "
  "Ftrl       0.05   0.001  --set initial_accumulator_value=1e-5"
  "ScheduleFreeAdamW 0.003 0.001 "
  "Adafactor  0.1    0.001  "
  "Muon       0.01   0.001  "
)
# Ftrl computes each weight from its accumulators; with Keras's initial_accumulator_value of 0.1
# the first steps set every weight near 0, which leaves a ReLU network without a gradient.

# The value of key $1 in train_mlp's final line, $final.
field() { sed -E "s/.* $1=([^ ]+).*/\1/" <<< "$final"; }

rm -rf "$out/data" && mkdir -p "$out/data/mlp"
echo "optimizer,label" > "$out/data/mlp/labels.csv"
echo "== train_mlp: $epochs epochs with each optimizer (--device $device) =="
results=()
for run in "${runs[@]}"; do
  read -r name lr keras_lr extra <<< "$run"
  log=$out/data/mlp/$name.txt
  # shellcheck disable=SC2086  # extra holds options
  if ! "$build/examples/train_mlp" --device "$device" --optimizer "$name" --lr "$lr" $extra --epochs "$epochs" \
      --log-csv "$out/data/mlp/$name.csv" > "$log" 2>&1; then
    cat "$log"
    echo "demo: train_mlp failed with $name" >&2
    exit 1
  fi
  final=$(grep '^final: ' "$log")
  shown_lr=$lr
  [ "$lr" != "$keras_lr" ] && shown_lr="$lr (Keras $keras_lr)"
  echo "$name,$name lr $lr" >> "$out/data/mlp/labels.csv"
  results+=("$name|$shown_lr|$(field loss)|$(field test_loss)|$(field test_accuracy)|$(field ms_per_step)|$(field device)|${extra//--set /}")
  printf '  %-17s test accuracy %5.1f%%  (%s s so far)\n' "$name" \
    "$(awk -v a="$(field test_accuracy)" 'BEGIN { print 100 * a }')" "$(elapsed)"
done

# The same Adam run data-parallel on 2 ranks (train_mlp under mpirun: each rank a shard of every
# batch, cuoptim sums the gradients over MPI), on the host: the GPU data-parallel path needs one
# GPU per rank. Open MPI needs to be told that root may run it, and that 2 ranks may share fewer
# cores.
echo "== train_mlp: Adam data-parallel on 2 ranks (mpirun -np 2, --device host) =="
if command -v mpirun >/dev/null 2>&1; then
  log=$out/data/mlp/Adam_2_ranks.txt
  if OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
      mpirun -np 2 "$build/examples/train_mlp" --device host --optimizer Adam --lr 0.001 --epochs "$epochs" \
      > "$log" 2>&1; then
    final=$(grep '^final: ' "$log")
    printf '  Adam on %s ranks: test accuracy %5.1f%%, final loss %s, %s ms per step  (%s s so far)\n' "$(field ranks)" \
      "$(awk -v a="$(field test_accuracy)" 'BEGIN { print 100 * a }')" "$(field loss)" "$(field ms_per_step)" "$(elapsed)"
  else
    cat "$log"
    echo "demo: train_mlp under mpirun -np 2 failed" >&2
    exit 1
  fi
else
  echo "  skipped: no mpirun (scripts/setup.sh installs openmpi-bin)"
fi

echo "== paths: every optimizer on four 2-D problems =="
"$build/examples/paths" --out "$out/data/paths" > "$out/paths.txt"
echo "  final losses and distances to the minimum in demo/paths.txt"

echo "== pictures =="
if ! wait "$venv_pid"; then
  cat "$out/venv.log"
  echo "demo: could not make the Python environment $venv (matplotlib from PyPI)" >&2
  exit 1
fi
pictures=$("$venv/bin/python" scripts/plot_demo.py "$out/data" "$out")

echo
echo "MLP 2-64-64-5 on 5 interleaved spirals (4000 training, 1000 held-out points), $epochs epochs, batch 32:"
printf '%-17s  %-20s  %10s  %9s  %13s  %13s  %-6s  %s\n' optimizer "learning rate" "final loss" "test loss" \
  "test accuracy" "time per step" device "other settings"
failed=()
for r in "${results[@]}"; do
  IFS='|' read -r name lr loss test_loss accuracy ms dev other <<< "$r"
  printf '%-17s  %-20s  %10.4f  %9.4f  %12.1f%%  %10.3f ms  %-6s  %s\n' "$name" "$lr" "$loss" "$test_loss" \
    "$(awk -v a="$accuracy" 'BEGIN { print 100 * a }')" "$ms" "$dev" "$other" | sed 's/ *$//'
  awk -v a="$accuracy" 'BEGIN { exit !(a < 0.5) }' && failed+=("$name")
done
echo "(final loss: the mean cross-entropy on the training split after the last epoch; chance accuracy is 20%)"
echo
echo "Pictures:"
while IFS= read -r picture; do echo "  $picture"; done <<< "$pictures"
echo "Data: $out/data (train_mlp logs and CSV, paths CSV)"
echo "demo: done in $(elapsed) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "demo: ${failed[*]} did not train (test accuracy below 50%)" >&2
  exit 1
fi
