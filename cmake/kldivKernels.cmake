# kldiv_add_kernels(<target> SPECS <spec>... [TARGETS <halide-target>...] [NAME <name>])
#
# Generates kernels with `kldiv aot` at build time and links them into
# <target>: static libraries and headers, no libkldiv, Halide or LLVM at run
# time. SPECS are `kldiv aot --spec` values (PASS:DTYPE:REDUCTION[:logt][:SHAPE]);
# TARGETS are Halide target strings or host (the default). Every target's
# kernels are generated, into ${CMAKE_CURRENT_BINARY_DIR}/<name>/<halide-target>;
# the first target's are linked into <target> (a cross build names its own
# architecture first), and each is also an imported library
# <name>.<halide-target> with its runtime <name>_runtime.<halide-target>.
# NAME defaults to <target>_kernels. Include <name>.h for every kernel.
include_guard(GLOBAL)
find_package(Threads REQUIRED)

function(kldiv_add_kernels target)
    cmake_parse_arguments(arg "" "NAME" "SPECS;TARGETS" ${ARGN})
    if (arg_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "kldiv_add_kernels: unexpected arguments ${arg_UNPARSED_ARGUMENTS}")
    endif ()
    if (NOT arg_SPECS)
        message(FATAL_ERROR "kldiv_add_kernels: no SPECS given")
    endif ()
    if (NOT arg_TARGETS)
        set(arg_TARGETS host)
    endif ()
    if (NOT arg_NAME)
        set(arg_NAME ${target}_kernels)
    endif ()
    set(out "${CMAKE_CURRENT_BINARY_DIR}/${arg_NAME}")
    set(args aot --output "${out}" --name ${arg_NAME})
    foreach (spec IN LISTS arg_SPECS)
        list(APPEND args --spec ${spec})
    endforeach ()
    set(outputs "")
    foreach (halide_target IN LISTS arg_TARGETS)
        list(APPEND args --target ${halide_target})
        set(dir "${out}/${halide_target}")
        list(APPEND outputs "${dir}/lib${arg_NAME}.a" "${dir}/lib${arg_NAME}_runtime.a" "${dir}/include/${arg_NAME}.h")
        file(MAKE_DIRECTORY "${dir}/include")
    endforeach ()
    add_custom_command(OUTPUT ${outputs}
                       COMMAND kldiv::kldiv_cli ${args}
                       DEPENDS kldiv::kldiv_cli
                       COMMENT "kldiv aot: ${arg_NAME} for ${arg_TARGETS}"
                       VERBATIM)
    add_custom_target(${arg_NAME}_generate DEPENDS ${outputs})
    foreach (halide_target IN LISTS arg_TARGETS)
        set(dir "${out}/${halide_target}")
        add_library(${arg_NAME}_runtime.${halide_target} STATIC IMPORTED GLOBAL)
        set_target_properties(${arg_NAME}_runtime.${halide_target} PROPERTIES
                              IMPORTED_LOCATION "${dir}/lib${arg_NAME}_runtime.a"
                              INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS}")
        add_library(${arg_NAME}.${halide_target} STATIC IMPORTED GLOBAL)
        set_target_properties(${arg_NAME}.${halide_target} PROPERTIES
                              IMPORTED_LOCATION "${dir}/lib${arg_NAME}.a"
                              INTERFACE_INCLUDE_DIRECTORIES "${dir}/include"
                              INTERFACE_LINK_LIBRARIES ${arg_NAME}_runtime.${halide_target})
        add_dependencies(${arg_NAME}.${halide_target} ${arg_NAME}_generate)
        add_dependencies(${arg_NAME}_runtime.${halide_target} ${arg_NAME}_generate)
    endforeach ()
    list(GET arg_TARGETS 0 first)
    target_link_libraries(${target} PRIVATE ${arg_NAME}.${first})
    add_dependencies(${target} ${arg_NAME}_generate)
endfunction()
