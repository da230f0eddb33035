# Shared by the bench scripts (sourced from the repository root): the dependencies, a release
# `strata` in $strata, and free_port.
source scripts/deps.sh
cargo build --release --locked -q -p strata
strata="$CARGO_TARGET_DIR/release/strata"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
