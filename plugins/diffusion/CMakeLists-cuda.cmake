# The diffusion runtime's CUDA backend (backend-cuda.c): its kernels
# (cuda/kernels.cu) compiled by nvcc into a fatbin for sm_80, sm_89 and
# sm_90 (plus compute_90 PTX for newer GPUs; GH_CUDA_ARCHS narrows the
# list, e.g. -DGH_CUDA_ARCHS=90 for one machine's GPU) and embedded, and the driver
# loader (gpuhostd/cuda.c). A static library with hidden symbols, like
# gh-dbackend-cpu; only built where nvcc is found, and then it defines
# GH_HAVE_CUDA_BACKEND for whoever links it. Exact math: no --use_fast_math.
# cuBLASLt (for the GEMMs) and cuDNN (for 3x3 convolutions, where its
# headers are found) are found here but loaded at run time.
get_filename_component(GH_DCUDA_ROOT "${GH_CUDA_INCLUDE_DIR}" DIRECTORY)
find_program(GH_NVCC nvcc HINTS ${GH_DCUDA_ROOT}/bin)
set(GH_CUDA_ARCHS "80;89;90" CACHE STRING "GPU architectures of the CUDA kernels (PTX of the last is kept too)")
if(GH_NVCC)
  set(GH_DCUDA_GENCODE "")
  foreach(arch IN LISTS GH_CUDA_ARCHS)
    if(NOT arch MATCHES "^[0-9]+$")
      message(FATAL_ERROR "GH_CUDA_ARCHS: '${arch}' is not an architecture number such as 90")
    endif()
    list(APPEND GH_DCUDA_GENCODE -gencode arch=compute_${arch},code=sm_${arch})
  endforeach()
  list(GET GH_CUDA_ARCHS -1 GH_DCUDA_PTX)
  list(APPEND GH_DCUDA_GENCODE -gencode arch=compute_${GH_DCUDA_PTX},code=compute_${GH_DCUDA_PTX})
  set(GH_DCUDA_FATBIN ${CMAKE_CURRENT_BINARY_DIR}/diffusion-kernels.fatbin)
  set(GH_DCUDA_FATBIN_C ${CMAKE_CURRENT_BINARY_DIR}/diffusion-kernels-fatbin.c)
  add_custom_command(OUTPUT ${GH_DCUDA_FATBIN}
    COMMAND ${GH_NVCC} -fatbin -O3 ${GH_DCUDA_GENCODE}
            ${CMAKE_CURRENT_LIST_DIR}/cuda/kernels.cu -o ${GH_DCUDA_FATBIN}
    DEPENDS ${CMAKE_CURRENT_LIST_DIR}/cuda/kernels.cu VERBATIM)
  add_custom_command(OUTPUT ${GH_DCUDA_FATBIN_C}
    COMMAND ${CMAKE_COMMAND} -DIN=${GH_DCUDA_FATBIN} -DOUT=${GH_DCUDA_FATBIN_C} -DSYMBOL=gh_dcuda_fatbin
            -P ${PROJECT_SOURCE_DIR}/cmake/embed.cmake
    DEPENDS ${GH_DCUDA_FATBIN} ${PROJECT_SOURCE_DIR}/cmake/embed.cmake VERBATIM)

  # cuBLASLt is dlopen()ed at run time (cublaslt.c): by the soname of the
  # toolkit found here, then by its path there.
  find_library(GH_CUBLASLT_LIBRARY cublasLt HINTS ${GH_DCUDA_ROOT}/lib64 ${GH_DCUDA_ROOT}/lib)
  set(GH_CUBLASLT_DEFS "")
  if(GH_CUBLASLT_LIBRARY)
    get_filename_component(GH_CUBLASLT_DIR "${GH_CUBLASLT_LIBRARY}" DIRECTORY)
    file(GLOB GH_CUBLASLT_VERSIONED "${GH_CUBLASLT_DIR}/libcublasLt.so.[0-9]*")
    list(SORT GH_CUBLASLT_VERSIONED)
    foreach(f IN LISTS GH_CUBLASLT_VERSIONED)
      get_filename_component(n "${f}" NAME)
      if(n MATCHES "^libcublasLt\\.so\\.[0-9]+$")
        list(APPEND GH_CUBLASLT_DEFS GH_CUBLASLT_SONAME="${n}" GH_CUBLASLT_PATH="${GH_CUBLASLT_DIR}/${n}")
        break()
      endif()
    endforeach()
  endif()

  # cuDNN likewise (dnn.c), where its headers are in the toolkit.
  find_path(GH_CUDNN_INCLUDE_DIR cudnn.h HINTS ${GH_CUDA_INCLUDE_DIR} ${GH_DCUDA_ROOT}/include)
  find_library(GH_CUDNN_LIBRARY cudnn HINTS ${GH_DCUDA_ROOT}/lib64 ${GH_DCUDA_ROOT}/lib)
  set(GH_CUDNN_SOURCES "")
  set(GH_CUDNN_DEFS "")
  if(GH_CUDNN_INCLUDE_DIR)
    set(GH_CUDNN_SOURCES ${CMAKE_CURRENT_LIST_DIR}/dnn.c)
    file(STRINGS "${GH_CUDNN_INCLUDE_DIR}/cudnn_version.h" GH_CUDNN_MAJOR_LINE REGEX "^#define CUDNN_MAJOR [0-9]+")
    string(REGEX REPLACE ".* ([0-9]+)$" "\\1" GH_CUDNN_MAJOR "${GH_CUDNN_MAJOR_LINE}")
    list(APPEND GH_CUDNN_DEFS GH_HAVE_CUDNN=1 GH_CUDNN_SONAME="libcudnn.so.${GH_CUDNN_MAJOR}")
    if(GH_CUDNN_LIBRARY)
      get_filename_component(GH_CUDNN_DIR "${GH_CUDNN_LIBRARY}" DIRECTORY)
      list(APPEND GH_CUDNN_DEFS GH_CUDNN_PATH="${GH_CUDNN_DIR}/libcudnn.so.${GH_CUDNN_MAJOR}")
    endif()
    message(STATUS "CUDA backend: cuDNN ${GH_CUDNN_MAJOR} headers in ${GH_CUDNN_INCLUDE_DIR}")
  else()
    message(STATUS "CUDA backend: no cuDNN headers; convolutions on im2col and cuBLASLt only")
  endif()

  add_library(gh-dbackend-cuda STATIC
    ${CMAKE_CURRENT_LIST_DIR}/backend-cuda.c
    ${CMAKE_CURRENT_LIST_DIR}/cublaslt.c
    ${GH_CUDNN_SOURCES}
    ${PROJECT_SOURCE_DIR}/daemon/gpuhostd/cuda.c
    ${GH_DCUDA_FATBIN_C})
  set_target_properties(gh-dbackend-cuda PROPERTIES POSITION_INDEPENDENT_CODE ON C_VISIBILITY_PRESET hidden)
  target_include_directories(gh-dbackend-cuda PUBLIC ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/daemon
                             ${CMAKE_CURRENT_LIST_DIR})
  target_include_directories(gh-dbackend-cuda SYSTEM PUBLIC ${GH_CUDA_INCLUDE_DIR})
  target_compile_definitions(gh-dbackend-cuda PUBLIC GH_HAVE_CUDA_BACKEND=1)
  target_compile_definitions(gh-dbackend-cuda PRIVATE ${GH_CUBLASLT_DEFS} ${GH_CUDNN_DEFS})
  if(GH_CUDNN_INCLUDE_DIR)
    target_include_directories(gh-dbackend-cuda SYSTEM PRIVATE ${GH_CUDNN_INCLUDE_DIR})
  endif()
  target_link_libraries(gh-dbackend-cuda PUBLIC m ${CMAKE_DL_LIBS} Threads::Threads)
endif()
