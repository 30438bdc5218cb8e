# `cmake --install`: everything a host or a plugin author needs, in one prefix.
#
#   <prefix>/bin/moeq                      the tool (conform, inspect, load, run, ...)
#   <prefix>/lib/moeq/plugins/*.so         built-in plugins: the tool's install-relative default
#                                          (<bin>/../lib/moeq/plugins, Registry::search_path)
#   <prefix>/include/moeq/abi.h            the C ABI
#   <prefix>/include/moeq/*.hpp            libmoeq's C++ API (registry, loader, host, reference, ...)
#   <prefix>/include/moeq/sdk/*.hpp        the plugin SDK (trampolines, views, kernels table)
#   <prefix>/<libdir>/libmoeq.a            libmoeq (target moeq::moeq)
#   <prefix>/<libdir>/libmoeq_c.so         the C API <moeq/moeq.h> as a shared library (moeq::c);
#                                          it finds the plugins at <libdir>/moeq/plugins
#   <prefix>/<libdir>/libmoeq_sdk.a        the SDK (moeq::sdk), with dtype helpers
#   <prefix>/<libdir>/libmoeq_json.a       Boost.JSON compiled once (moeq::json); users need only
#                                          Boost headers
#   <prefix>/<libdir>/cmake/moeq/          find_package(moeq CONFIG): moeq::abi, moeq::sdk,
#                                          moeq::moeq, moeq_add_plugin()
#   <prefix>/<libdir>/pkgconfig/moeq.pc    for hosts built without CMake
include(CMakePackageConfigHelpers)

set(MOEQ_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/moeq)
# Fixed (not LIBDIR-relative): the tool looks for <bin>/../lib/moeq/plugins.
set(MOEQ_INSTALL_PLUGINDIR lib/moeq/plugins)

# Headers.
install(FILES ${PROJECT_SOURCE_DIR}/abi/moeq/abi.h ${PROJECT_SOURCE_DIR}/core/include/moeq/moeq.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/moeq)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/core/include/moeq/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/moeq
        FILES_MATCHING PATTERN "*.hpp")
install(DIRECTORY ${PROJECT_SOURCE_DIR}/plugins/sdk/include/moeq/sdk DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/moeq
        FILES_MATCHING PATTERN "*.hpp")

# Libraries, exported as moeq::abi, moeq::json, moeq::moeq, moeq::sdk, moeq::c.
set_target_properties(moeq_abi PROPERTIES EXPORT_NAME abi)
set_target_properties(moeq_c PROPERTIES EXPORT_NAME c INSTALL_RPATH_USE_LINK_PATH ON)
target_include_directories(moeq_c PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
set_target_properties(moeq_json PROPERTIES EXPORT_NAME json)
set_target_properties(moeq_core PROPERTIES EXPORT_NAME moeq)
target_include_directories(moeq_core PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
if(NOT TARGET moeq::moeq)
  add_library(moeq::moeq ALIAS moeq_core)
  add_library(moeq::abi ALIAS moeq_abi)
endif()
install(TARGETS moeq_abi moeq_json moeq_core moeq_sdk moeq_c EXPORT moeqTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(EXPORT moeqTargets NAMESPACE moeq:: DESTINATION ${MOEQ_INSTALL_CMAKEDIR} FILE moeqTargets.cmake)

# The tool, and the built-in plugins where it looks for them. The tool keeps the run path of
# the shared libraries it links outside the system directories (NVRTC).
set_target_properties(moeq_cli PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS moeq_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
get_property(MOEQ_BUILTIN_PLUGINS GLOBAL PROPERTY MOEQ_BUILTIN_PLUGINS)
install(TARGETS ${MOEQ_BUILTIN_PLUGINS} LIBRARY DESTINATION ${MOEQ_INSTALL_PLUGINDIR})

# The CMake package. moeqConfig.cmake looks for NVRTC (moeq::nvrtc) also where this build found it.
set(MOEQ_NVRTC_LIBRARY_DIR "")
if(MOEQ_HAVE_NVRTC)
  get_target_property(nvrtc_location CUDA::nvrtc IMPORTED_LOCATION)
  get_filename_component(MOEQ_NVRTC_LIBRARY_DIR "${nvrtc_location}" DIRECTORY)
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/moeqConfig.cmake.in
  ${PROJECT_BINARY_DIR}/moeqConfig.cmake
  INSTALL_DESTINATION ${MOEQ_INSTALL_CMAKEDIR}
  PATH_VARS MOEQ_INSTALL_PLUGINDIR CMAKE_INSTALL_BINDIR)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/moeqConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/moeqConfig.cmake
  ${PROJECT_BINARY_DIR}/moeqConfigVersion.cmake
  ${CMAKE_CURRENT_LIST_DIR}/moeqPlugin.cmake
  ${CMAKE_CURRENT_LIST_DIR}/moeq_embed_kernels.cmake
  ${CMAKE_CURRENT_LIST_DIR}/moeq_plugin_exports.map
  DESTINATION ${MOEQ_INSTALL_CMAKEDIR})

# pkg-config, relocatable (prefix from the .pc file's own place).
set(MOEQ_PC_EXTRA_LIBS "")
if(MOEQ_HAVE_NVRTC)
  set(MOEQ_PC_EXTRA_LIBS "-L${CUDAToolkit_LIBRARY_DIR} -Wl,-rpath,${CUDAToolkit_LIBRARY_DIR} -lnvrtc")
endif()
file(RELATIVE_PATH MOEQ_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
set(MOEQ_PC_CFLAGS "")
foreach(dir IN LISTS DLPACK_INCLUDE_DIR Boost_INCLUDE_DIRS)
  if(NOT dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES AND NOT " ${MOEQ_PC_CFLAGS} " MATCHES " -I${dir} ")
    string(APPEND MOEQ_PC_CFLAGS " -I${dir}")
  endif()
endforeach()
configure_file(${CMAKE_CURRENT_LIST_DIR}/moeq.pc.in ${PROJECT_BINARY_DIR}/moeq.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/moeq.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(FILES ${PROJECT_SOURCE_DIR}/docs/PLUGIN_GUIDE.md DESTINATION ${CMAKE_INSTALL_DOCDIR} OPTIONAL)
