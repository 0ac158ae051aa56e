# gh_add_plugin(NAME SOURCES... [INSTALL])
# Builds a gpuhost pipeline plugin: a MODULE library named NAME.so with
# hidden visibility (only gh_plugin_entry is exported, through
# GH_PLUGIN_DEFINE), C11, and the gpuhost headers. INSTALL puts it into the
# plugin directory (lib/gpuhost/plugins).
function(gh_add_plugin name)
  cmake_parse_arguments(P "INSTALL" "" "" ${ARGN})
  add_library(${name} MODULE ${P_UNPARSED_ARGUMENTS})
  set_target_properties(${name} PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden
                        C_STANDARD 11 POSITION_INDEPENDENT_CODE ON)
  if(TARGET gpuhost)
    target_include_directories(${name} PRIVATE $<TARGET_PROPERTY:gpuhost,INTERFACE_INCLUDE_DIRECTORIES>)
  elseif(DEFINED GPUHOST_INCLUDE_DIRS)
    target_include_directories(${name} PRIVATE ${GPUHOST_INCLUDE_DIRS})
  endif()
  if(P_INSTALL)
    if(NOT DEFINED GH_PLUGINDIR)
      set(GH_PLUGINDIR "${CMAKE_INSTALL_LIBDIR}/gpuhost/plugins")
    endif()
    install(TARGETS ${name} LIBRARY DESTINATION ${GH_PLUGINDIR})
  endif()
endfunction()
