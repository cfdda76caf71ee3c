# The library's private dependencies, and what `cmake --install` installs (README.md "Install and
# link"): the shared and the static library, the header, the CMake package (cuoptimConfig.cmake,
# cuoptim::cuoptim and cuoptim::cuoptim_static) and the pkg-config files (cuoptim.pc,
# cuoptim-static.pc). Included by the top-level CMakeLists.txt.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(CUOPTIM_PACKAGE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/cuoptim)

# cuoptim_private_dependency(<target or library>
#                            [FIND_PACKAGE <find_package arguments>...] [MODULE <Find*.cmake>]
#                            [PKG_CONFIG <prefix> <module>] [PC_LIBS <flags>...])
# Links a dependency privately: the objects get its compile usage, the shared library links it and
# exports nothing of it, the static library names it for its consumers ($<LINK_ONLY:...>). Records
# how the installed package finds it again for the static library's consumers: FIND_PACKAGE (with
# the MODULE that finds it, installed beside the package) or PKG_CONFIG (pkg_check_modules with an
# imported target PkgConfig::<prefix>, the name the build used); and what the pkg-config files
# name: the PKG_CONFIG module (Requires.private) or PC_LIBS (Libs.private).
function(cuoptim_private_dependency dep)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "MODULE" "FIND_PACKAGE;PKG_CONFIG;PC_LIBS")
  if(TARGET ${dep})
    target_link_libraries(cuoptim_objects PRIVATE ${dep})
  endif()
  target_link_libraries(cuoptim PRIVATE ${dep})
  target_link_libraries(cuoptim_static PRIVATE ${dep})
  if(arg_FIND_PACKAGE)
    list(JOIN arg_FIND_PACKAGE " " find_args)
    set_property(GLOBAL APPEND_STRING PROPERTY CUOPTIM_CONFIG_FIND_DEPENDENCIES "_cuoptim_find_package(${find_args})\n")
  endif()
  if(arg_MODULE)
    set_property(GLOBAL APPEND PROPERTY CUOPTIM_CONFIG_MODULES ${arg_MODULE})
  endif()
  if(arg_PKG_CONFIG)
    list(GET arg_PKG_CONFIG 0 prefix)
    list(GET arg_PKG_CONFIG 1 module)
    set_property(GLOBAL APPEND_STRING PROPERTY CUOPTIM_CONFIG_FIND_DEPENDENCIES
                 "_cuoptim_find_pkg_config(${prefix} ${module})\n")
    set_property(GLOBAL APPEND PROPERTY CUOPTIM_PC_REQUIRES ${module})
  endif()
  if(arg_PC_LIBS)
    set_property(GLOBAL APPEND PROPERTY CUOPTIM_PC_LIBS ${arg_PC_LIBS})
  endif()
endfunction()

# The install rules. Call after every cuoptim_private_dependency.
function(cuoptim_install_package)
  install(TARGETS cuoptim EXPORT cuoptimTargets
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(TARGETS cuoptim_static EXPORT cuoptimStaticTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/include/cuoptim.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  # Two export sets: the static library's (and the dependencies it needs) is loaded only when
  # those are found, so that the shared library's consumers need none of them.
  install(EXPORT cuoptimTargets NAMESPACE cuoptim:: DESTINATION ${CUOPTIM_PACKAGE_DIR})
  install(EXPORT cuoptimStaticTargets NAMESPACE cuoptim:: DESTINATION ${CUOPTIM_PACKAGE_DIR})

  get_property(CUOPTIM_CONFIG_FIND_DEPENDENCIES GLOBAL PROPERTY CUOPTIM_CONFIG_FIND_DEPENDENCIES)
  get_property(modules GLOBAL PROPERTY CUOPTIM_CONFIG_MODULES)
  configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/cuoptimConfig.cmake.in
                                ${PROJECT_BINARY_DIR}/cuoptimConfig.cmake
                                INSTALL_DESTINATION ${CUOPTIM_PACKAGE_DIR})
  # 0.x: a new minor version may change the API.
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/cuoptimConfigVersion.cmake
                                   COMPATIBILITY SameMinorVersion)
  install(FILES ${PROJECT_BINARY_DIR}/cuoptimConfig.cmake ${PROJECT_BINARY_DIR}/cuoptimConfigVersion.cmake
          DESTINATION ${CUOPTIM_PACKAGE_DIR})
  if(modules)
    install(FILES ${modules} DESTINATION ${CUOPTIM_PACKAGE_DIR}/modules)
  endif()

  # pkg-config: paths relative to the .pc file, so that `cmake --install --prefix` and a moved
  # prefix both give the right ones.
  foreach(dir LIBDIR INCLUDEDIR)
    if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
      set(pc_${dir} "${CMAKE_INSTALL_${dir}}")
    else()
      set(pc_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
    endif()
  endforeach()
  file(RELATIVE_PATH pc_up "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
  set(CUOPTIM_PC_PREFIX "\${pcfiledir}/${pc_up}")
  string(REGEX REPLACE "/$" "" CUOPTIM_PC_PREFIX "${CUOPTIM_PC_PREFIX}")
  set(CUOPTIM_PC_LIBDIR "${pc_LIBDIR}")
  set(CUOPTIM_PC_INCLUDEDIR "${pc_INCLUDEDIR}")
  get_property(requires GLOBAL PROPERTY CUOPTIM_PC_REQUIRES)
  get_property(libs GLOBAL PROPERTY CUOPTIM_PC_LIBS)
  list(REMOVE_DUPLICATES libs)
  list(JOIN requires " " CUOPTIM_PC_REQUIRES)
  list(JOIN libs " " CUOPTIM_PC_LIBS)
  foreach(pc cuoptim cuoptim-static)
    configure_file(${PROJECT_SOURCE_DIR}/cmake/${pc}.pc.in ${PROJECT_BINARY_DIR}/${pc}.pc @ONLY)
    install(FILES ${PROJECT_BINARY_DIR}/${pc}.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
  endforeach()
endfunction()
