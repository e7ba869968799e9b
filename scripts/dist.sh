#!/usr/bin/env bash
# Builds the release artefacts into target/dist/ (README, "Install"):
#   lastcall-VERSION-x86_64-unknown-linux-musl.tar.gz    static binaries: no program interpreter,
#   lastcall-VERSION-aarch64-unknown-linux-musl.tar.gz   no shared library, so they run on Amazon
#                                                        Linux 2 and 2023, Ubuntu, RHEL, Debian alike
#   lastcall_VERSION-1_amd64.deb, lastcall_VERSION-1_arm64.deb
#   lastcall-VERSION-1.x86_64.rpm, lastcall-VERSION-1.aarch64.rpm
#   SHA256SUMS                                           over all of them (sha256sum -c SHA256SUMS)
# Each tarball holds the binary, the systemd units, the default and example configs, README.md and
# LICENSE under lastcall-VERSION-TARGET/; the packages hold what they always did.
#
# Sets up what it needs on a fresh machine (Debian, with Rust by rustup and Python 3): the two
# Rust targets (`rustup target add`), a virtualenv (.venv-dist) with the pinned Zig and
# cargo-zigbuild from scripts/dist-requirements.txt (Zig is the C compiler and the linker for both
# targets, aws-lc's C code included: no cross gcc, no musl-tools), and the pinned cargo-deb and
# cargo-generate-rpm. Every binary is checked before it is packed: its architecture, statically
# linked (readelf), at most 12 MB.
#
# The release build is long: fat LTO and one codegen unit, both targets side by side, 25 minutes
# on two cores when cold, with two aws-sdk-ec2 compilations of about 10 GiB each at the peak; a
# second run only repacks. The C compiler's path is part of what cargo builds against: the
# virtualenv is kept where it is, so that the build stays warm.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-lib.sh
. scripts/setup-lib.sh

targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
max_size=12000000
dist=target/dist
venv=.venv-dist
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "dist: no version in Cargo.toml" >&2; exit 1; }
started=$SECONDS

say() { printf 'dist: %s\n' "$*" >&2; }

# 1. The toolchain.
command -v readelf >/dev/null || apt_install binutils
command -v dpkg-shlibdeps >/dev/null || apt_install dpkg-dev
installed=$(rustup target list --installed)
for target in "${targets[@]}"; do
  if ! grep -qx "$target" <<<"$installed"; then
    say "adding the Rust target $target"
    rustup target add "$target" >/dev/null
  fi
done
pinned_venv "$venv" scripts/dist-requirements.txt "the pinned Zig and cargo-zigbuild (seconds)"
cargo_tool cargo-deb 3.8.0
cargo_tool cargo-generate-rpm 0.21.1

# 2. Both binaries, in one cargo run (the build scripts and macros are built once). cargo-zigbuild
# runs `python3 -m ziglang` from the virtualenv as the C compiler and linker.
say "building $version for ${targets[*]} (release)"
build_started=$SECONDS
target_args=()
for target in "${targets[@]}"; do target_args+=(--target "$target"); done
PATH="$PWD/$venv/bin:$PATH" cargo zigbuild --release --locked "${target_args[@]}"
say "built in $((SECONDS - build_started)) s"

# 3. Checked, then packed.
rm -rf "$dist"
mkdir -p "$dist"
# Reproducible archives: files dated by the last commit, owned by root, in name order.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
for target in "${targets[@]}"; do
  bin=target/$target/release/lastcall
  case $target in
    x86_64-*) machine='Advanced Micro Devices X86-64' deb_arch=amd64 rpm_arch=x86_64 ;;
    aarch64-*) machine='AArch64' deb_arch=arm64 rpm_arch=aarch64 ;;
  esac
  header=$(readelf --file-header "$bin")
  grep -q "Machine: *$machine\$" <<<"$header" || { say "$bin is not built for $machine: $header"; exit 1; }
  if readelf --program-headers "$bin" | grep -q INTERP; then
    say "$bin has a program interpreter: it is not static"; exit 1
  fi
  if readelf --dynamic "$bin" | grep -q NEEDED; then
    say "$bin needs shared libraries: $(readelf --dynamic "$bin" | grep NEEDED)"; exit 1
  fi
  size=$(stat -c %s "$bin")
  [ "$size" -le "$max_size" ] || { say "$bin is $size bytes, more than $max_size"; exit 1; }
  say "$target: static, $size bytes"

  name=lastcall-$version-$target
  stage=$(mktemp -d)
  mkdir -p "$stage/$name/systemd"
  install -m 0755 "$bin" "$stage/$name/lastcall"
  install -m 0644 deploy/systemd/*.service deploy/systemd/*.timer "$stage/$name/systemd/"
  install -m 0644 deploy/lastcall.example.toml README.md LICENSE "$stage/$name/"
  install -m 0600 deploy/lastcall.default.toml "$stage/$name/lastcall.toml"
  tar --create --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    --directory "$stage" "$name" | gzip -n -9 >"$dist/$name.tar.gz"
  rm -rf "$stage"

  # The packages take the binary from target/TARGET/release/ (their assets name
  # target/release/lastcall, which both tools rewrite for --target). Already stripped.
  cargo deb --quiet --locked --no-build --no-strip --target "$target" --output "$dist/" >/dev/null
  cargo generate-rpm --target "$target" --arch "$rpm_arch" --output "$dist/"
  [ -f "$dist/lastcall_$version-1_$deb_arch.deb" ] || { say "no $deb_arch .deb in $dist"; exit 1; }
  [ -f "$dist/lastcall-$version-1.$rpm_arch.rpm" ] || { say "no $rpm_arch .rpm in $dist"; exit 1; }
done
(cd "$dist" && sha256sum -- *.tar.gz *.deb *.rpm >SHA256SUMS)
say "done in $((SECONDS - started)) s:"
(cd "$dist" && ls -l -- *.tar.gz *.deb *.rpm SHA256SUMS) >&2
