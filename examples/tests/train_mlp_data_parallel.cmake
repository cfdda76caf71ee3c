# train_mlp under mpirun on the host: every rank trains on its shard of every batch and cuoptim
# sums the gradients over MPI.
#   - 2 and 3 ranks learn the spirals (test accuracy well above chance, 0.2), and every rank ends
#     with the same parameters (train_mlp compares the ranks' checksums and fails otherwise);
#   - --shard-state (ZeRO-1), --gradient-arena, and both with small buckets end bit for bit where
#     the run without them does (Adam is elementwise);
#   - one rank under mpirun ends bit for bit where the plain run does, and so does the plain run
#     with --gradient-arena.
# 4001 training points in batches of 25: the shards of 3 ranks are 9, 8 and 8 examples, and the
# epoch's last batch has 1 example, so some ranks have none of it.
# Usage: cmake -DTRAIN_MLP=path -DMPIEXEC=path -DNP_FLAG=-n [-DMPIEXEC_PREFLAGS=...] -DWORK=dir -P ...
include(${CMAKE_CURRENT_LIST_DIR}/train_mlp_mpi.cmake)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(common --device host --optimizer Adam --lr 0.01 --epochs 4 --batch-size 25 --points 5001)

run_train_mlp(plain RANKS 0 ARGS ${common} --quiet)
run_train_mlp(plain_arena RANKS 0 ARGS ${common} --quiet --gradient-arena)
expect_equal("${plain}" "${plain_arena}" "the plain run with and without --gradient-arena")
run_train_mlp(one RANKS 1 ARGS ${common} --quiet)
expect_equal("${plain}" "${one}" "the plain run and one rank under mpirun")

foreach(ranks 2 3)
  run_train_mlp(base RANKS ${ranks} ARGS ${common})
  field(world "${base}" ranks)
  field(accuracy "${base}" test_accuracy)
  if(NOT world EQUAL ranks)
    message(FATAL_ERROR "${ranks} ranks started, the final line says ranks=${world}")
  endif()
  if(accuracy LESS 0.6)
    message(FATAL_ERROR "${ranks} ranks: test accuracy ${accuracy} after 4 epochs, expected at least 0.6 (chance is 0.2)")
  endif()
  foreach(variant "--shard-state" "--gradient-arena" "--gradient-arena;--shard-state;--bucket-mb;0.0005")
    run_train_mlp(other RANKS ${ranks} ARGS ${common} --quiet ${variant})
    expect_equal("${base}" "${other}" "${ranks} ranks with and without ${variant}")
  endforeach()
endforeach()

message("learned on 2 and 3 ranks; the same bits with sharded state and the gradient arena; one rank as the plain run")
