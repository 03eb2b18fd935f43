//! Supervises one Marina process task; see `marina_runtime_process::supervisor`.

fn main() -> std::process::ExitCode {
    marina_runtime_process::supervisor::main()
}
