# scripts/doxygen-md-filter.awk - let a Markdown page that links to the
# guides (docs/index.md) be Doxygen's main page.
#
# Usage (docs/Doxyfile's FILTER_PATTERNS runs it): awk -f doxygen-md-filter.awk page.md
#
# The guides are not Doxygen input (they are written for GitHub's Markdown,
# whose heading anchors Doxygen 1.9 does not generate), so Doxygen cannot
# resolve a link such as [Routing](routing.md) and warns. This filter turns
# each relative link into an HTML link to the file in the source tree, as
# seen from build/docs/html/, where the page is rendered; links with a
# scheme (https:, mailto:) or to an anchor (#...) are left alone. Line for
# line, so Doxygen's line numbers are the file's. Run from the repository
# root, as scripts/docs.sh does.

BEGIN {
    # From build/docs/html/ back to the repository root.
    up = "../../../"
}

NR == 1 {
    # The page's folder, relative to the repository root (the working
    # directory), with a trailing '/'.
    dir = FILENAME
    root = ENVIRON["PWD"] "/"
    if (substr(dir, 1, length(root)) == root)
        dir = substr(dir, length(root) + 1)
    sub(/[^\/]*$/, "", dir)
    if (dir ~ /^\//) # not under the working directory: assume docs/
        dir = "docs/"
}

{
    line = $0
    out = ""
    # [text](target), text without brackets, target without spaces
    while (match(line, /\[[^]\[]*\]\([^) ]+\)/)) {
        link = substr(line, RSTART, RLENGTH)
        out = out substr(line, 1, RSTART - 1)
        line = substr(line, RSTART + RLENGTH)
        p = index(link, "](")
        text = substr(link, 2, p - 2)
        target = substr(link, p + 2, length(link) - p - 2)
        if (target ~ /^[A-Za-z][A-Za-z0-9+.-]*:/ || target ~ /^#/)
            out = out link
        else
            out = out "<a href=\"" up dir target "\">" text "</a>"
    }
    print out line
}
