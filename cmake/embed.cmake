# Turns a file into a C source defining a NUL-terminated byte array, so the
# daemon can return it verbatim without reading it at run time.
#   cmake -DIN=file -DOUT=file.c -DSYMBOL=name -P embed.cmake
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}" "/* Generated from ${IN}; do not edit. */\n#include <stddef.h>\nconst char ${SYMBOL}[] = {${bytes}0x00};\nconst size_t ${SYMBOL}_size = sizeof(${SYMBOL}) - 1;\n")
