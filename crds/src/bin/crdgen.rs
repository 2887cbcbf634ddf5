//! Writes the CRD YAML files into the directory given as the only argument.
use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let Some(dir) = env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: crdgen DIR");
        return ExitCode::from(2);
    };
    for (file, yaml) in weir_api::crd_files() {
        let path = dir.join(file);
        if let Err(err) = fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
