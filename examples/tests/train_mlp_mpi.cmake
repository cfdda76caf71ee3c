# What the data-parallel tests of train_mlp share (include()d by train_mlp_data_parallel*.cmake).
# Inputs: TRAIN_MLP, MPIEXEC, NP_FLAG (MPIEXEC_NUMPROC_FLAG), MPIEXEC_PREFLAGS (may be empty), WORK.

# Open MPI refuses root unless told, and more ranks than cores (3 ranks on 2 cores) unless told;
# other MPIs ignore these variables.
set(ENV{OMPI_ALLOW_RUN_AS_ROOT} 1)
set(ENV{OMPI_ALLOW_RUN_AS_ROOT_CONFIRM} 1)
set(ENV{OMPI_MCA_rmaps_base_oversubscribe} 1)
# In the sanitizer build: Open MPI does not free what MPI_Init allocates, so every MPI process
# would report leaks that are not cuoptim's; the example tests without MPI and the suites check
# cuoptim's own.
if(DEFINED ENV{ASAN_OPTIONS})
  set(ENV{ASAN_OPTIONS} "$ENV{ASAN_OPTIONS}:detect_leaks=0")
endif()

# run_train_mlp(result_var RANKS n ARGS ...): runs train_mlp (RANKS 0: plain, without mpirun) and
# returns its final line without the timing fields. Fails unless it exits 0 with exactly one
# final line and, with --quiet absent, one line per epoch (rank 0 alone prints).
function(run_train_mlp result_var)
  cmake_parse_arguments(RUN "" "RANKS" "ARGS" ${ARGN})
  if(RUN_RANKS EQUAL 0)
    set(command ${TRAIN_MLP} ${RUN_ARGS})
  else()
    set(command ${MPIEXEC} ${NP_FLAG} ${RUN_RANKS} ${MPIEXEC_PREFLAGS} ${TRAIN_MLP} ${RUN_ARGS})
  endif()
  execute_process(COMMAND ${command} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 240)
  string(REPLACE ";" " " shown "${command}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${shown}\nexited with ${rc}:\n${out}${err}")
  endif()
  string(REGEX MATCHALL "final: [^\n]*" finals "${out}")
  list(LENGTH finals final_count)
  if(NOT final_count EQUAL 1)
    message(FATAL_ERROR "${shown}\n${final_count} final lines, expected 1 (only rank 0 prints):\n${out}")
  endif()
  if(NOT out MATCHES "(final: [^\n]*) ms_per_step=[^ ]+ seconds=[^ ]+ (checksum=[0-9a-f]+)")
    message(FATAL_ERROR "${shown}\nno final line in:\n${out}")
  endif()
  set(final "${CMAKE_MATCH_1} ${CMAKE_MATCH_2}")
  if(NOT RUN_ARGS MATCHES "--quiet" AND final MATCHES " epochs=([0-9]+)")
    set(epochs ${CMAKE_MATCH_1})
    string(REGEX MATCHALL "\nepoch +[0-9]+/" epoch_lines "\n${out}")
    list(LENGTH epoch_lines epoch_count)
    if(NOT epoch_count EQUAL epochs)
      message(FATAL_ERROR "${shown}\n${epoch_count} epoch lines for ${epochs} epochs (only rank 0 prints):\n${out}")
    endif()
  endif()
  string(REPLACE ";" " " args "${RUN_ARGS}")
  message("${RUN_RANKS} ranks, ${args}:\n  ${final}")
  set(${result_var} "${final}" PARENT_SCOPE)
endfunction()

# field(result_var line key): the value of key=value in a final line.
function(field result_var line key)
  if(NOT line MATCHES " ${key}=([^ ]+)")
    message(FATAL_ERROR "no ${key}= in '${line}'")
  endif()
  set(${result_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
endfunction()

function(expect_equal a b what)
  if(NOT a STREQUAL b)
    message(FATAL_ERROR "${what}: the runs differ:\n  ${a}\n  ${b}")
  endif()
endfunction()
