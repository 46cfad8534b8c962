// tests/cxx_header.cpp - the public headers compile as C++ (extern "C",
// no C-only constructs) and the options macro works there too.
#include <floodgate.h>

int main() {
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    opts.name = "cxx";
    fg_ctx ctx;
    return fg_ctx_init(&ctx, "GET", "/") == FG_OK && opts.name != nullptr ? 0 : 1;
}
