# ctest driver (see the top-level CMakeLists.txt): installs the qkern build into a scratch
# prefix, builds this directory against it with find_package(qkern), and runs both programs.
# Inputs: QKERN_BUILD_DIR, QKERN_SOURCE_DIR, QKERN_WORK_DIR, QKERN_SANITIZE, CMAKE_CXX_COMPILER.
cmake_minimum_required(VERSION 3.22)

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${QKERN_WORK_DIR}/prefix)
set(build ${QKERN_WORK_DIR}/build)
file(REMOVE_RECURSE ${QKERN_WORK_DIR})

run_step("cmake --install" ${CMAKE_COMMAND} --install ${QKERN_BUILD_DIR} --prefix ${prefix})
foreach(installed include/qkern.h include/qkern_dlpack.h)
  if(NOT EXISTS ${prefix}/${installed})
    message(FATAL_ERROR "cmake --install did not install ${installed}")
  endif()
endforeach()
file(GLOB_RECURSE config_files ${prefix}/*/cmake/qkern/qkernConfig.cmake)
file(GLOB_RECURSE libraries ${prefix}/*/libqkern.so)
if(NOT config_files OR NOT libraries)
  message(FATAL_ERROR "cmake --install did not install libqkern.so and lib*/cmake/qkern/qkernConfig.cmake")
endif()

set(configure_args -S ${QKERN_SOURCE_DIR}/native/consumer-tests -B ${build} -DCMAKE_PREFIX_PATH=${prefix}
                   -DCMAKE_BUILD_TYPE=Release)
if(CMAKE_CXX_COMPILER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER})
endif()
if(QKERN_SANITIZE)
  # A sanitized libqkern needs the sanitizer runtime in the program too.
  set(san "-fsanitize=address,undefined -fno-omit-frame-pointer")
  list(APPEND configure_args "-DCMAKE_C_FLAGS=${san}" "-DCMAKE_CXX_FLAGS=${san}" "-DCMAKE_EXE_LINKER_FLAGS=${san}")
endif()
run_step("configuring the consumers with find_package(qkern)" ${CMAKE_COMMAND} ${configure_args})
run_step("building the consumers" ${CMAKE_COMMAND} --build ${build})

# The page's build without CMake (docs/using-from-c-cpp-python.md), with this prefix for /opt/qkern.
list(GET libraries 0 library)
get_filename_component(libdir ${library} DIRECTORY)
set(cc_flags)
if(QKERN_SANITIZE)
  set(cc_flags -fsanitize=address,undefined -fno-omit-frame-pointer)
endif()
run_step("cc without CMake" cc ${cc_flags} ${QKERN_SOURCE_DIR}/native/consumer-tests/nf4_dequantize.c
         -I${prefix}/include -L${libdir} -lqkern -Wl,-rpath,${libdir} -o ${build}/nf4_plain_c)

foreach(program nf4_c nf4_cpp nf4_plain_c)
  run_step("running ${program}" ${build}/${program})
  message(STATUS "${program}: ${step_output}")
endforeach()
