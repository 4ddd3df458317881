#!/bin/sh
# Installs polyplug-runtime's C API as a C library: the static and the shared library (the
# latter under its SONAME, with the development symlink), both headers and the pkg-config file.
# The static library is stripped of debug info on the way (Cargo strips only linked outputs, and
# a staticlib's members include Rust's standard library, built with debug info): about 15 MB
# instead of 28 MB on x86_64 Linux.
#
#   cargo build --release -p polyplug-runtime-capi
#   sh crates/polyplug-runtime/capi/install.sh /usr/local target/release
#
# Usage: install.sh PREFIX [BUILD_DIR]   (BUILD_DIR defaults to target/release)
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 PREFIX [BUILD_DIR]" >&2
    exit 2
fi
prefix=$1
build=${2:-target/release}
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^version *= *"\(.*\)"$/\1/p' "$here/Cargo.toml" | head -n 1)
if [ -z "$version" ]; then
    # The workspace sets the version; fall back to its manifest.
    version=$(sed -n 's/^version *= *"\(.*\)"$/\1/p' "$here/../../../Cargo.toml" | head -n 1)
fi
[ -n "$version" ] || { echo "install.sh: cannot read the crate version" >&2; exit 1; }

case $(uname -s) in
    Darwin) shared=libpolyplug_runtime_capi.dylib; installed_shared=$shared; strip_debug="strip -S" ;;
    *) shared=libpolyplug_runtime_capi.so; installed_shared=$shared.0; strip_debug="strip --strip-debug" ;;
esac
for file in "$build/libpolyplug_runtime_capi.a" "$build/$shared"; do
    [ -f "$file" ] || { echo "install.sh: $file is missing: build with 'cargo build --release -p polyplug-runtime-capi' first" >&2; exit 1; }
done

mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
cp "$build/libpolyplug_runtime_capi.a" "$prefix/lib/libpolyplug_runtime_capi.a"
$strip_debug "$prefix/lib/libpolyplug_runtime_capi.a"
cp "$build/$shared" "$prefix/lib/$installed_shared"
if [ "$installed_shared" != "$shared" ]; then
    ln -sf "$installed_shared" "$prefix/lib/$shared"
fi
cp "$here/../include/polyplug.h" "$here/include/polyplug_runtime.h" "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" \
    "$here/polyplug-runtime-capi.pc.in" > "$prefix/lib/pkgconfig/polyplug-runtime-capi.pc"
echo "installed polyplug-runtime-capi $version under $prefix"
