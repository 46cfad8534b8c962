#!/bin/sh
# scripts/embed.sh - turn a text file into a C string constant, so a program
# carries its default config inside the binary.
#
# Usage: scripts/embed.sh <identifier> <file>   (writes the C text to stdout)
# The file is embedded byte for byte (each line gets its newline back);
# backslashes and double quotes are escaped.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 <identifier> <file>" >&2; exit 2; }
name=$1
file=$2
[ -r "$file" ] || { echo "embed: cannot read $file" >&2; exit 1; }
printf '/* Generated from %s by scripts/embed.sh: do not edit. */\n' "$file"
printf 'static const char %s[] =\n' "$name"
sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$/\\n"/' "$file"
printf '    "";\n'
