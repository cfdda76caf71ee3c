# Checkpoints under mpirun: rank 0 writes them, every rank loads them. A 2-rank run stopped inside
# the second epoch and resumed on 2 ranks ends bit for bit where the straight 2-rank run ends.
# --checkpoint and --resume with --shard-state are refused (cuoptim cannot save sharded state),
# with one message (rank 0's) and nothing trained; --shard-state without mpirun is refused too.
# Usage: as train_mlp_data_parallel.cmake.
include(${CMAKE_CURRENT_LIST_DIR}/train_mlp_mpi.cmake)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(common --device host --optimizer Nadam --lr 0.005 --ema 0.9 --epochs 3 --quiet)

run_train_mlp(straight RANKS 2 ARGS ${common})
# 125 batches per epoch: the stop at 200 lies inside the second epoch; checkpoints at 70, 140, 200.
run_train_mlp(stopped RANKS 2 ARGS ${common} --max-steps 200 --checkpoint ${WORK}/ckpt --checkpoint-every 70)
foreach(file ckpt ckpt.optimizer)
  if(NOT EXISTS ${WORK}/${file})
    message(FATAL_ERROR "no ${WORK}/${file} after the stopped run")
  endif()
endforeach()
run_train_mlp(resumed RANKS 2 ARGS ${common} --resume ${WORK}/ckpt)
expect_equal("${straight}" "${resumed}" "the straight 2-rank run and the resumed one")
if(stopped STREQUAL straight)
  message(FATAL_ERROR "the stopped run already ends where the straight one does: the test shows nothing")
endif()

function(expect_refused what expected)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  string(REGEX MATCHALL "train_mlp: [^\n]*" messages "${err}")
  list(LENGTH messages count)
  if(rc EQUAL 0 OR NOT err MATCHES "${expected}" OR NOT count EQUAL 1 OR out MATCHES "final:")
    message(FATAL_ERROR "${what}: exit ${rc}, ${count} messages (expected 1 matching '${expected}'):\n${out}${err}")
  endif()
  message("${what}: refused: ${messages}")
endfunction()
set(mpi ${MPIEXEC} ${NP_FLAG} 2 ${MPIEXEC_PREFLAGS} ${TRAIN_MLP})
expect_refused("--checkpoint with --shard-state" "--checkpoint with --shard-state: cuoptim cannot save"
               ${mpi} ${common} --shard-state --checkpoint ${WORK}/sharded)
expect_refused("--resume with --shard-state" "--resume with --shard-state"
               ${mpi} ${common} --shard-state --resume ${WORK}/ckpt)
expect_refused("--shard-state without mpirun" "--shard-state: only in a data-parallel run"
               ${TRAIN_MLP} ${common} --shard-state)
if(EXISTS ${WORK}/sharded OR EXISTS ${WORK}/sharded.optimizer)
  message(FATAL_ERROR "a refused run wrote a checkpoint")
endif()
message("resumed exactly on 2 ranks; sharded checkpoints refused")
