#!/usr/bin/env bash
# Fetches the source distributions of a pinned list of GPL- and LGPL-licensed pure-Python
# packages from PyPI (issue #6: copyleft Python code for the quality benchmark), checks each
# against the sha256 PyPI publishes for it, and unpacks it under DIR/src/NAME-VERSION.
# DIR/packages.tsv lists name, version and SPDX license (as the package declares it).
# Nothing fetched is committed.
#
#   scripts/fetch-pypi.sh DIR
set -euo pipefail
DIR=${1:?usage: scripts/fetch-pypi.sh DIR}
mkdir -p "$DIR/sdist" "$DIR/src"
# name  version  SPDX expression (the package's `License-Expression`, or its license
# classifier and LICENSE file read as one)
PACKAGES=$(cat <<'EOF'
scapy	2.8.0	GPL-2.0-only
mutagen	1.48.1	GPL-2.0-or-later
pylint	4.1.4	GPL-2.0-or-later
astroid	4.3.4	LGPL-2.1-or-later
urwid	5.1.0	LGPL-2.1-only
ranger-fm	1.9.4	GPL-3.0-only
pykickstart	3.78	GPL-2.0-only
ldap3	2.9.1	LGPL-3.0-or-later
python-xlib	0.33	LGPL-2.1-or-later
paramiko	5.1.0	LGPL-2.1-or-later
ansible-core	2.21.5	GPL-3.0-or-later
python-debian	1.1.1	GPL-2.0-or-later
EOF
)
: > "$DIR/packages.tsv.tmp"
while IFS=$'\t' read -r name version license; do
  out="$DIR/src/$name-$version"
  if [ ! -d "$out" ]; then
    # The simple index (PEP 503) names every file with its sha256.
    link=$(curl -sSf --max-time 60 "https://pypi.org/simple/$name/" \
      | { grep -o "href=\"[^\"]*-$version\\.tar\\.gz#sha256=[0-9a-f]*\"" || true; } \
      | head -1 | sed 's/^href="//; s/"$//')
    [ -n "$link" ] || { echo "fetch-pypi: no sdist of $name $version on PyPI" >&2; exit 1; }
    url=${link%%#*}
    sha=${link##*#sha256=}
    case "$url" in http*) ;; *) url="https://pypi.org/simple/$name/$url" ;; esac
    file="$DIR/sdist/$(basename "$url")"
    curl -sSfL --max-time 300 -o "$file" "$url"
    echo "$sha  $file" | sha256sum -c --quiet - || { echo "fetch-pypi: checksum mismatch for $file" >&2; exit 1; }
    mkdir -p "$out.tmp"
    tar -xzf "$file" -C "$out.tmp" --strip-components=1
    mv "$out.tmp" "$out"
  fi
  printf '%s\t%s\t%s\n' "$name" "$version" "$license" >> "$DIR/packages.tsv.tmp"
done <<< "$PACKAGES"
mv "$DIR/packages.tsv.tmp" "$DIR/packages.tsv"
echo "fetch-pypi: $(wc -l < "$DIR/packages.tsv") packages in $DIR/src"
