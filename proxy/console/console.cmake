# The operator console, compiled into llama_pool_proxy (included from proxy/CMakeLists.txt,
# so the generated source belongs to the same directory as the target). Its assets are
# embedded at build time: editing a file under assets/ regenerates console_assets_data.cpp.
set(CONSOLE_DIR ${CMAKE_CURRENT_LIST_DIR})
set(CONSOLE_ASSETS
  ${CONSOLE_DIR}/assets/index.html
  ${CONSOLE_DIR}/assets/console.css
  ${CONSOLE_DIR}/assets/console.js
)
set(CONSOLE_ASSETS_CPP ${CMAKE_CURRENT_BINARY_DIR}/console/console_assets_data.cpp)
add_custom_command(
  OUTPUT ${CONSOLE_ASSETS_CPP}
  COMMAND ${CMAKE_COMMAND} -DOUTPUT=${CONSOLE_ASSETS_CPP} "-DASSETS=${CONSOLE_ASSETS}"
          -P ${CONSOLE_DIR}/embed_assets.cmake
  DEPENDS ${CONSOLE_ASSETS} ${CONSOLE_DIR}/embed_assets.cmake
  COMMENT "Embedding the console's assets"
  VERBATIM)
target_sources(llama_pool_proxy PRIVATE
  ${CONSOLE_DIR}/console.cpp
  ${CONSOLE_DIR}/console_page.cpp
  ${CONSOLE_DIR}/console_sampler.cpp
  ${CONSOLE_ASSETS_CPP})
