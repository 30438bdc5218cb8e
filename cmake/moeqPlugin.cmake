# moeq_add_plugin(): the one way moeq plugins are built, in this tree and out of it.
#
#   moeq_add_plugin(<name>
#                   SOURCES <file>...
#                   [KERNELS <file>...]            # device sources embedded as strings
#                   [PTX <file.ptx>...]            # PTX modules (e.g. from Triton), each with
#                                                  # <file>.json (Triton's metadata) beside it
#                   [OUTPUT_DIRECTORY <dir>]       # where the .so lands (default: the binary dir)
#                   [INSTALL_DESTINATION <dir>])   # adds an install() rule for the .so
#
# Builds libmoeq_<name>.so, a MODULE that:
# - links moeq::sdk (ABI header, C++ helpers, Boost.JSON compiled once);
# - compiles with hidden visibility and links with a version script, so that the one
#   exported dynamic symbol is moeq_plugin_get_descriptor (`moeq conform` checks this);
# - links with --no-undefined (a missing symbol fails the build, not the host's dlopen) and
#   --exclude-libs,ALL (static libraries linked in export nothing);
# - embeds every KERNELS file as a string: moeq::sdk::embedded_kernels() lists them and
#   moeq::sdk::embedded_kernel_source("file.cuh") finds one (<moeq/sdk/kernels.hpp>). The
#   table is regenerated at build time whenever a listed file changes.
# - embeds every PTX file and the metadata JSON beside it in the same table:
#   moeq::sdk::triton::embedded_ptx("gemm.ptx") and embedded_metadata("gemm.ptx")
#   (<moeq/sdk/triton.hpp>); a PTX file without its .json is a configure error.
# The target is named <name>; add sources, definitions or libraries to it as to any target.

include_guard(GLOBAL)
set_property(GLOBAL PROPERTY MOEQ_PLUGIN_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")

function(moeq_add_plugin name)
  cmake_parse_arguments(P "" "OUTPUT_DIRECTORY;INSTALL_DESTINATION" "SOURCES;KERNELS;PTX" ${ARGN})
  if(P_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "moeq_add_plugin(${name}): unexpected arguments ${P_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT P_SOURCES)
    message(FATAL_ERROR "moeq_add_plugin(${name}): SOURCES is required")
  endif()
  if(NOT name MATCHES "^[a-z0-9_]+$")
    message(FATAL_ERROR "moeq_add_plugin(${name}): plugin names are [a-z0-9_]+ (the registry refuses others)")
  endif()
  if(NOT TARGET moeq::sdk)
    message(FATAL_ERROR "moeq_add_plugin(${name}): no target moeq::sdk (find_package(moeq CONFIG) first)")
  endif()
  get_property(cmake_dir GLOBAL PROPERTY MOEQ_PLUGIN_CMAKE_DIR)

  # The kernel table: file names (as sources #include them) must be unique.
  set(kernel_paths "")
  set(kernel_names "")
  set(embedded ${P_KERNELS})
  foreach(ptx IN LISTS P_PTX)
    get_filename_component(ptx_path "${ptx}" ABSOLUTE)
    if(NOT ptx_path MATCHES "\\.ptx$")
      message(FATAL_ERROR "moeq_add_plugin(${name}): PTX file ${ptx} does not end in .ptx")
    endif()
    string(REGEX REPLACE "\\.ptx$" ".json" meta_path "${ptx_path}")
    if(NOT EXISTS "${meta_path}")
      message(FATAL_ERROR "moeq_add_plugin(${name}): PTX file ${ptx} has no metadata ${meta_path} beside it")
    endif()
    list(APPEND embedded "${ptx_path}" "${meta_path}")
  endforeach()
  foreach(k IN LISTS embedded)
    get_filename_component(path "${k}" ABSOLUTE)
    get_filename_component(kname "${k}" NAME)
    if(kname IN_LIST kernel_names)
      message(FATAL_ERROR "moeq_add_plugin(${name}): two KERNELS files are named ${kname}")
    endif()
    list(APPEND kernel_names "${kname}")
    list(APPEND kernel_paths "${path}")
  endforeach()
  set(gen_dir "${CMAKE_CURRENT_BINARY_DIR}/moeq_plugin_${name}")
  set(list_file "${gen_dir}/kernels.txt")
  set(table "${gen_dir}/embedded_kernels.cpp")
  list(JOIN kernel_paths "\n" list_text)
  file(CONFIGURE OUTPUT "${list_file}" CONTENT "${list_text}\n" @ONLY)
  add_custom_command(
    OUTPUT "${table}"
    COMMAND "${CMAKE_COMMAND}" "-DLIST=${list_file}" "-DOUTPUT=${table}" -P "${cmake_dir}/moeq_embed_kernels.cmake"
    DEPENDS ${kernel_paths} "${list_file}" "${cmake_dir}/moeq_embed_kernels.cmake"
    COMMENT "Embedding the kernel sources of plugin ${name}"
    VERBATIM)

  add_library(${name} MODULE ${P_SOURCES} "${table}")
  set_target_properties(${name} PROPERTIES
    PREFIX "libmoeq_"
    OUTPUT_NAME ${name}
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LINK_DEPENDS "${cmake_dir}/moeq_plugin_exports.map")
  if(P_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${P_OUTPUT_DIRECTORY}")
  endif()
  target_compile_features(${name} PRIVATE cxx_std_20)
  target_link_libraries(${name} PRIVATE moeq::sdk)
  target_link_options(${name} PRIVATE
    "LINKER:--no-undefined"
    "LINKER:--exclude-libs,ALL"
    "LINKER:--version-script=${cmake_dir}/moeq_plugin_exports.map")
  if(P_INSTALL_DESTINATION)
    install(TARGETS ${name} LIBRARY DESTINATION "${P_INSTALL_DESTINATION}")
  endif()
endfunction()
