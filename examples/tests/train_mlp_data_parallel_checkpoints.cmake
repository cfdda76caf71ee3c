# Checkpoints under mpirun: rank 0 writes them, every rank loads them. A 2-rank run stopped inside
# the second epoch and resumed on 2 ranks ends bit for bit where the straight 2-rank run ends.
# With --shard-state every rank writes its own shares of the optimizer's state and a resumed sharded
# run ends bit for bit where the straight one does; a whole-state checkpoint does not resume a
# sharded run (one message, rank 0's, nothing trained); --shard-state without mpirun is refused.
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
expect_refused("--shard-state without mpirun" "--shard-state: only in a data-parallel run"
               ${TRAIN_MLP} ${common} --shard-state)

# Sharded optimizer state: every rank writes its shares (ckpt.optimizer.rankR), rank 0 the program's
# part; the resumed sharded run ends bit for bit where the straight sharded run ends.
run_train_mlp(sharded_straight RANKS 2 ARGS ${common} --shard-state)
run_train_mlp(sharded_stopped RANKS 2 ARGS ${common} --shard-state --max-steps 200 --checkpoint ${WORK}/sharded
              --checkpoint-every 70)
foreach(file sharded sharded.optimizer.rank0 sharded.optimizer.rank1)
  if(NOT EXISTS ${WORK}/${file})
    message(FATAL_ERROR "no ${WORK}/${file} after the stopped sharded run")
  endif()
endforeach()
if(EXISTS ${WORK}/sharded.optimizer)
  message(FATAL_ERROR "a sharded run wrote a whole-state file")
endif()
run_train_mlp(sharded_resumed RANKS 2 ARGS ${common} --shard-state --resume ${WORK}/sharded)
expect_equal("${sharded_straight}" "${sharded_resumed}" "the straight sharded run and the resumed one")
# The whole-state checkpoint does not load into sharded state, nor the reverse.
expect_refused("--resume of whole state with --shard-state" "ckpt.optimizer.rank0"
               ${mpi} ${common} --shard-state --resume ${WORK}/ckpt)
message("resumed exactly on 2 ranks, sharded and not")
