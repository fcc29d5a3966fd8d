# buildctl hook for SYCL (oneAPI icpx) projects such as vllm-xpu-kernels.
#
# Injected with -DCMAKE_PROJECT_INCLUDE=<this file> (included at the end of every project() call,
# also those of FetchContent'd dependencies; guarded to act once) or, CMake >= 3.24, listed in
# -DCMAKE_PROJECT_TOP_LEVEL_INCLUDES (a list, so it can sit beside other hooks). It
#   1. at the first project(): copies BUILDCTL_XPU_AOT_DEVICES / BUILDCTL_XPU_XE2_AOT_DEVICES into
#      the environment variables upstream reads (VLLM_XPU_AOT_DEVICES, VLLM_XPU_XE2_AOT_DEVICES),
#      and rewrites -fsycl-max-parallel-link-jobs=N in CMAKE_<TYPE>_LINKER_FLAGS;
#   2. at the end of configure (cmake_language(DEFER) on the top-level directory): rewrites
#      -fsycl-max-parallel-link-jobs=N in every target's LINK_OPTIONS / INTERFACE_LINK_OPTIONS /
#      LINK_FLAGS and every directory's LINK_OPTIONS to BUILDCTL_SYCL_LINK_JOBS, optionally adds
#      -fno-sycl-rdc (BUILDCTL_SYCL_NO_RDC) to the device-linked targets, and writes what it did
#      to ${CMAKE_BINARY_DIR}/buildctl/xpu_hook.json.
# Upstream hard-codes 16 inner device-link jobs per library, whatever -j is; each holds the whole
# fat-module bitcode, so that number, not ninja's -j, decides the link's peak memory.
# Inputs (cache variables, all optional): BUILDCTL_SYCL_LINK_JOBS (1..16), BUILDCTL_SYCL_NO_RDC,
# BUILDCTL_XPU_AOT_DEVICES, BUILDCTL_XPU_XE2_AOT_DEVICES.

cmake_minimum_required(VERSION 3.19) # cmake_language(DEFER)

# Every project() call includes this file again; the work is done once per configure run.
get_property(_buildctl_xpu_done GLOBAL PROPERTY BUILDCTL_XPU_HOOK_ACTIVE)
if(_buildctl_xpu_done)
  return()
endif()
set_property(GLOBAL PROPERTY BUILDCTL_XPU_HOOK_ACTIVE TRUE)

if(DEFINED BUILDCTL_SYCL_LINK_JOBS AND NOT "${BUILDCTL_SYCL_LINK_JOBS}" STREQUAL "")
  if(NOT BUILDCTL_SYCL_LINK_JOBS MATCHES "^[1-9][0-9]*$" OR BUILDCTL_SYCL_LINK_JOBS GREATER 16)
    message(FATAL_ERROR
      "buildctl: BUILDCTL_SYCL_LINK_JOBS must be a whole number from 1 to 16, "
      "got '${BUILDCTL_SYCL_LINK_JOBS}'")
  endif()
endif()

# Upstream reads the AOT device lists from the environment; an empty value means "no AOT".
if(DEFINED BUILDCTL_XPU_AOT_DEVICES)
  set(ENV{VLLM_XPU_AOT_DEVICES} "${BUILDCTL_XPU_AOT_DEVICES}")
endif()
if(DEFINED BUILDCTL_XPU_XE2_AOT_DEVICES)
  set(ENV{VLLM_XPU_XE2_AOT_DEVICES} "${BUILDCTL_XPU_XE2_AOT_DEVICES}")
endif()

# Rewrites the link-jobs value inside one string or list; out_var is empty when nothing matched.
function(_buildctl_xpu_rewrite value out_var)
  set(result "")
  if(value MATCHES "-fsycl-max-parallel-link-jobs=[0-9]+")
    string(REGEX REPLACE "-fsycl-max-parallel-link-jobs=[0-9]+"
      "-fsycl-max-parallel-link-jobs=${BUILDCTL_SYCL_LINK_JOBS}" result "${value}")
  endif()
  set(${out_var} "${result}" PARENT_SCOPE)
endfunction()

# Flags given on the command line / in the cache: rewrite before any target is created, so every
# directory (including subprojects) inherits the capped value.
if(BUILDCTL_SYCL_LINK_JOBS)
  foreach(_type IN ITEMS SHARED MODULE EXE)
    foreach(_suffix IN ITEMS "" _RELEASE _RELWITHDEBINFO _DEBUG _MINSIZEREL)
      set(_var "CMAKE_${_type}_LINKER_FLAGS${_suffix}")
      if(DEFINED ${_var})
        _buildctl_xpu_rewrite("${${_var}}" _new)
        if(NOT _new STREQUAL "")
          set(${_var} "${_new}")
          set_property(GLOBAL APPEND PROPERTY BUILDCTL_XPU_REWRITTEN "variable:${_var}")
        endif()
      endif()
    endforeach()
  endforeach()
endif()

function(_buildctl_xpu_collect_dirs dir out_var)
  set(all "${dir}")
  get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(sub IN LISTS subdirs)
    _buildctl_xpu_collect_dirs("${sub}" more)
    list(APPEND all ${more})
  endforeach()
  set(${out_var} "${all}" PARENT_SCOPE)
endfunction()

function(_buildctl_json_escape value out_var)
  string(REPLACE "\\" "\\\\" value "${value}")
  string(REPLACE "\"" "\\\"" value "${value}")
  set(${out_var} "${value}" PARENT_SCOPE)
endfunction()

function(_buildctl_xpu_finalize)
  _buildctl_xpu_collect_dirs("${CMAKE_SOURCE_DIR}" dirs)
  get_property(rewritten GLOBAL PROPERTY BUILDCTL_XPU_REWRITTEN)
  set(device_linked "")
  foreach(dir IN LISTS dirs)
    if(BUILDCTL_SYCL_LINK_JOBS)
      get_property(opts DIRECTORY "${dir}" PROPERTY LINK_OPTIONS)
      _buildctl_xpu_rewrite("${opts}" new)
      if(NOT new STREQUAL "")
        set_property(DIRECTORY "${dir}" PROPERTY LINK_OPTIONS "${new}")
        list(APPEND rewritten "directory:${dir}")
      endif()
    endif()
    get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(tgt IN LISTS targets)
      foreach(prop IN ITEMS LINK_OPTIONS INTERFACE_LINK_OPTIONS LINK_FLAGS)
        get_property(is_set TARGET "${tgt}" PROPERTY ${prop} SET)
        if(NOT is_set)
          continue()
        endif()
        get_property(value TARGET "${tgt}" PROPERTY ${prop})
        if(value MATCHES "-fsycl-max-parallel-link-jobs")
          list(APPEND device_linked "${tgt}")
        endif()
        if(BUILDCTL_SYCL_LINK_JOBS)
          _buildctl_xpu_rewrite("${value}" new)
          if(NOT new STREQUAL "")
            set_property(TARGET "${tgt}" PROPERTY ${prop} "${new}")
            list(APPEND rewritten "target:${tgt}:${prop}")
          endif()
        endif()
      endforeach()
    endforeach()
  endforeach()
  list(REMOVE_DUPLICATES device_linked)

  # -fno-sycl-rdc: AOT per translation unit at compile time instead of one giant device link.
  # Only icpx understands it, hence the generator expressions.
  if(BUILDCTL_SYCL_NO_RDC)
    foreach(tgt IN LISTS device_linked)
      get_target_property(type "${tgt}" TYPE)
      if(type STREQUAL "INTERFACE_LIBRARY")
        continue()
      endif()
      target_compile_options("${tgt}" PRIVATE
        "$<$<COMPILE_LANG_AND_ID:CXX,IntelLLVM>:-fno-sycl-rdc>")
      target_link_options("${tgt}" PRIVATE "$<$<LINK_LANG_AND_ID:CXX,IntelLLVM>:-fno-sycl-rdc>")
      list(APPEND rewritten "no-rdc:${tgt}")
    endforeach()
  endif()

  # A record for buildctl's report and tests: what was rewritten and to which value. Built by
  # concatenation: LINK_OPTIONS values contain ';' themselves.
  set(entries_json "")
  set(sep "")
  foreach(item IN LISTS rewritten)
    _buildctl_json_escape("${item}" esc)
    string(APPEND entries_json "${sep}\"${esc}\"")
    set(sep ", ")
  endforeach()
  set(targets_joined "")
  set(sep "")
  foreach(tgt IN LISTS device_linked)
    get_property(value TARGET "${tgt}" PROPERTY LINK_OPTIONS)
    _buildctl_json_escape("${value}" esc)
    string(APPEND targets_joined "${sep}\"${tgt}\": \"${esc}\"")
    set(sep ", ")
  endforeach()
  set(jobs "${BUILDCTL_SYCL_LINK_JOBS}")
  if(jobs STREQUAL "")
    set(jobs "null")
  endif()
  if(BUILDCTL_SYCL_NO_RDC)
    set(no_rdc "true")
  else()
    set(no_rdc "false")
  endif()
  _buildctl_json_escape("$ENV{VLLM_XPU_AOT_DEVICES}" aot)
  _buildctl_json_escape("$ENV{VLLM_XPU_XE2_AOT_DEVICES}" aot2)
  file(WRITE "${CMAKE_BINARY_DIR}/buildctl/xpu_hook.json"
    "{\"schema\": \"buildctl.xpu-hook/1\", \"link_jobs\": ${jobs}, \"no_rdc\": ${no_rdc}, "
    "\"aot_devices\": \"${aot}\", \"xe2_aot_devices\": \"${aot2}\", "
    "\"rewritten\": [${entries_json}], \"device_linked\": {${targets_joined}}}\n")
endfunction()

# Runs after the whole top-level CMakeLists.txt (and all subdirectories) has been processed.
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _buildctl_xpu_finalize)
