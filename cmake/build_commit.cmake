# Writes OUTPUT: the git commit of SOURCE_DIR ("-dirty" with uncommitted changes to tracked files);
# outside a checkout, $DLLM_BUILD_COMMIT if set (a copy of the source made elsewhere), else
# "unknown". Run at every build, so the stamp follows the code that was built.
execute_process(COMMAND git rev-parse --short HEAD WORKING_DIRECTORY "${SOURCE_DIR}"
                OUTPUT_VARIABLE commit RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
# Only dllm's own checkout counts: an unpacked sdist or a vendored copy inside another project's
# repository would otherwise be stamped with that project's commit.
execute_process(COMMAND git rev-parse --show-toplevel WORKING_DIRECTORY "${SOURCE_DIR}"
                OUTPUT_VARIABLE toplevel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
file(REAL_PATH "${SOURCE_DIR}" source_real)
if(toplevel)
  file(REAL_PATH "${toplevel}" toplevel)
endif()
if(rc EQUAL 0 AND toplevel STREQUAL source_real)
  execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY "${SOURCE_DIR}"
                  OUTPUT_VARIABLE changes OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(changes)
    string(APPEND commit "-dirty")
  endif()
elseif(DEFINED ENV{DLLM_BUILD_COMMIT})
  set(commit "$ENV{DLLM_BUILD_COMMIT}")
else()
  set(commit "unknown")
endif()
file(WRITE "${OUTPUT}.new" "# Written at every build by cmake/build_commit.cmake.\nCOMMIT = \"${commit}\"\n")
file(COPY_FILE "${OUTPUT}.new" "${OUTPUT}" ONLY_IF_DIFFERENT)
