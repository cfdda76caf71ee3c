# 2 and 3 ranks against one: the same steps but for rounding. Each rank sums its shard's
# gradients, which rounds otherwise than one sum over the batch, so the runs are not bit for bit
# equal; with SGD the difference stays at the last printed digit (a loss printed with 6 decimals),
# while a wrong weighting of the shards (the mean of the shards' means, which counts the examples
# of a smaller shard more, or the sum of their means, twice or three times the gradient) moves the
# losses by 1e-4 and more. Shards of 13 and 12 or 9, 8 and 8 examples, and a last batch of 1
# example that some ranks have nothing of. (Adam amplifies the rounding: its runs agree to 6 digits
# for the first 150 steps here, then drift apart as chaotic training does.)
# Usage: as train_mlp_data_parallel.cmake.
include(${CMAKE_CURRENT_LIST_DIR}/train_mlp_mpi.cmake)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(common --device host --optimizer SGD --lr 0.3 --epochs 2 --batch-size 25 --points 5001 --quiet)
set(tolerance 20) # in the last printed digit, 1e-6

# A loss printed with 6 decimals as an integer number of 1e-6.
function(micro result_var value)
  if(NOT value MATCHES "^([0-9]+)\\.([0-9][0-9][0-9][0-9][0-9][0-9])$")
    message(FATAL_ERROR "'${value}' is not a loss printed with 6 decimals")
  endif()
  math(EXPR units "${CMAKE_MATCH_1} * 1000000 + 1${CMAKE_MATCH_2} - 1000000")
  set(${result_var} ${units} PARENT_SCOPE)
endfunction()

run_train_mlp(one RANKS 0 ARGS ${common})
foreach(ranks 2 3)
  run_train_mlp(many RANKS ${ranks} ARGS ${common})
  foreach(key loss test_loss)
    field(a "${one}" ${key})
    field(b "${many}" ${key})
    micro(a_units ${a})
    micro(b_units ${b})
    math(EXPR difference "${a_units} - ${b_units}")
    if(difference LESS 0)
      math(EXPR difference "-(${difference})")
    endif()
    if(difference GREATER tolerance)
      message(FATAL_ERROR "${key}: ${a} on one rank, ${b} on ${ranks}: they differ by ${difference}e-6, more than "
                          "the rounding of the shards' sums (${tolerance}e-6)")
    endif()
    message("${key}: ${a} on one rank, ${b} on ${ranks} (difference ${difference}e-6)")
  endforeach()
endforeach()
