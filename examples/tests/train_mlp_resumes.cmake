# A run stopped in the middle of an epoch and resumed from its checkpoint must end exactly where
# the same run without the stop ends: same parameters (checksum), losses and accuracies. The
# optimizer keeps state of every kind there: Nadam's slots and u_product, EMA averages, gradient
# accumulators. A resume under other options must be refused, naming the option.
# Usage: cmake -DTRAIN_MLP=path -DWORK=dir -P train_mlp_resumes.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(common --device host --optimizer Nadam --lr 0.005 --ema 0.9 --accumulate 2 --epochs 3 --quiet)

function(run_train_mlp result_var)
  execute_process(COMMAND ${TRAIN_MLP} ${common} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "train_mlp ${ARGN} exited with ${rc}: ${out}${err}")
  endif()
  # The fields that describe where training ended (not its speed).
  if(NOT out MATCHES "final: ([^\n]*) ms_per_step=[^ ]+ seconds=[^ ]+ (checksum=[0-9a-f]+)")
    message(FATAL_ERROR "train_mlp ${ARGN}: no final line in: ${out}")
  endif()
  set(${result_var} "${CMAKE_MATCH_1} ${CMAKE_MATCH_2}" PARENT_SCOPE)
endfunction()

run_train_mlp(straight)
# 125 batches per epoch: the stop at 200 lies inside the second epoch; checkpoints at 70, 140, 200.
run_train_mlp(stopped --max-steps 200 --checkpoint ${WORK}/ckpt --checkpoint-every 70)
foreach(file ckpt ckpt.optimizer)
  if(NOT EXISTS ${WORK}/${file})
    message(FATAL_ERROR "no ${WORK}/${file} after the stopped run")
  endif()
endforeach()
run_train_mlp(resumed --resume ${WORK}/ckpt)
message("straight: ${straight}\nresumed:  ${resumed}")
if(NOT straight STREQUAL resumed)
  message(FATAL_ERROR "the resumed run ends elsewhere than the straight one")
endif()
if(stopped STREQUAL straight)
  message(FATAL_ERROR "the stopped run already ends where the straight one does: the test shows nothing")
endif()

execute_process(COMMAND ${TRAIN_MLP} ${common} --batch-size 64 --resume ${WORK}/ckpt
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "--batch-size 32, this run has 64")
  message(FATAL_ERROR "a resume with another batch size: exit ${rc}, '${err}'")
endif()
execute_process(COMMAND ${TRAIN_MLP} ${common} --lr 0.01 --resume ${WORK}/ckpt
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "another optimizer config")
  message(FATAL_ERROR "a resume with another learning rate: exit ${rc}, '${err}'")
endif()
message("resumed exactly; other options refused")
