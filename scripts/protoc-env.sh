# Sourced by run.sh and test.sh. Some dependencies (etcd-client) compile .proto files in their
# build scripts and look for `protoc` on the PATH or in $PROTOC. When neither is there, point
# PROTOC at the protoc binary that ships inside the `protoc-bin-vendored` crate the workspace
# already depends on, so a Rust toolchain is all a build needs.
if [[ -z "${PROTOC:-}" ]] && ! command -v protoc >/dev/null 2>&1; then
    case "$(uname -m)" in
        x86_64) protoc_arch=x86_64 ;;
        aarch64 | arm64) protoc_arch=aarch_64 ;;
        *) protoc_arch="$(uname -m)" ;;
    esac
    vendored_manifest="$(cargo metadata --format-version 1 2>/dev/null |
        grep -o "\"manifest_path\":\"[^\"]*protoc-bin-vendored-linux-${protoc_arch}-[^\"]*/Cargo.toml\"" |
        head -1 | sed 's/^"manifest_path":"//; s/"$//')"
    if [[ -n "$vendored_manifest" && -x "$(dirname "$vendored_manifest")/bin/protoc" ]]; then
        export PROTOC="$(dirname "$vendored_manifest")/bin/protoc"
        echo "protoc: using the vendored $PROTOC"
    else
        echo "protoc not found: install it (Debian: apt-get install -y protobuf-compiler) or set PROTOC" >&2
        exit 1
    fi
fi
