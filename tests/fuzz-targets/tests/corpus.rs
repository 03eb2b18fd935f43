//! Replays every committed fuzz input through its target, on stable, in CI: the corpus
//! (`fuzz/corpus/<target>/`: inputs that cover each target's code) and the crashes found
//! (`fuzz/artifacts/<target>/`). A crash fixed stays fixed: its input is a regression test.
//! A crash not yet fixed is listed in `fuzz/known-crashes` and must still crash, so that the
//! list stays true; whoever fixes one deletes its line and keeps the input.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use marina_fuzz_targets::{TARGETS, Target, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|entry| entry.expect("a directory entry").path()).filter(|path| path.is_file()).collect();
    files.sort();
    files
}

fn names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Runs `body` on the input in `path`: `Err` with the panic's message if it panicked.
fn replay(body: Target, path: &Path) -> Result<(), String> {
    let input = fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    catch_unwind(AssertUnwindSafe(|| body(&input))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned())
    })
}

/// How a known crash ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// A Rust panic: replayed here, and must still panic.
    Panics,
    /// Stack overflow or out of memory: cannot be caught in a test, so not replayed.
    Aborts,
}

/// `fuzz/known-crashes`: `<target>/<artifact file> panics|aborts <crate>: <what>` per line.
fn known_crashes() -> BTreeMap<String, Ending> {
    let path = fuzz_dir().join("known-crashes");
    let text = fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            let (Some(file), Some(ending)) = (words.next(), words.next()) else {
                panic!("{}: {line:?} is not `<target>/<file> panics|aborts <crate>: <what>`", path.display())
            };
            let ending = match ending {
                "panics" => Ending::Panics,
                "aborts" => Ending::Aborts,
                other => panic!("{}: {other:?} is neither `panics` nor `aborts`", path.display()),
            };
            (file.to_owned(), ending)
        })
        .collect()
}

#[test]
fn every_target_has_its_fuzz_target_and_a_corpus() {
    let fuzz = fuzz_dir();
    let known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    for name in &known {
        assert!(fuzz.join(format!("fuzz_targets/{name}.rs")).is_file(), "fuzz/fuzz_targets/{name}.rs is missing");
        assert!(!files(&fuzz.join("corpus").join(name)).is_empty(), "fuzz/corpus/{name}/ is empty");
    }
    for dir in ["corpus", "artifacts"] {
        for name in names(&fuzz.join(dir)) {
            assert!(known.contains(&name.as_str()), "fuzz/{dir}/{name} is not a target of marina-fuzz-targets");
        }
    }
    for file in names(&fuzz.join("fuzz_targets")) {
        let name = file.strip_suffix(".rs").unwrap_or(&file);
        assert!(known.contains(&name), "fuzz/fuzz_targets/{file} is not in marina_fuzz_targets::TARGETS");
    }
}

#[test]
fn the_corpus_replays_cleanly() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, body) in TARGETS {
        for path in files(&fuzz_dir().join("corpus").join(name)) {
            replayed += 1;
            if let Err(message) = replay(*body, &path) {
                failures.push(format!("{name}/{}: {message}", path.file_name().unwrap_or_default().display()));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {replayed} corpus inputs panic:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn crashes_found_stay_fixed_and_known_ones_are_listed() {
    let known = known_crashes();
    let artifacts = fuzz_dir().join("artifacts");
    let mut failures = Vec::new();
    let mut listed = Vec::new();
    for name in names(&artifacts) {
        let body = target(&name).unwrap_or_else(|| panic!("fuzz/artifacts/{name} is not a target"));
        for path in files(&artifacts.join(&name)) {
            let key = format!("{name}/{}", path.file_name().unwrap_or_default().display());
            listed.push(key.clone());
            let ending = known.get(&key).copied();
            if ending == Some(Ending::Aborts) {
                continue; // it would take this test down with it
            }
            match (ending, replay(body, &path)) {
                (None, Ok(())) | (Some(_), Err(_)) => {}
                (None, Err(message)) => failures.push(format!(
                    "{key} crashes again: {message}\n  (a regression, or a new crash: fix it, or list it in fuzz/known-crashes)"
                )),
                (Some(_), Ok(())) => failures.push(format!(
                    "{key} no longer crashes: fixed? Delete its line from fuzz/known-crashes (keep the input)"
                )),
            }
        }
    }
    for key in known.keys() {
        if !listed.contains(key) {
            failures.push(format!("fuzz/known-crashes lists {key}, which is not in fuzz/artifacts/"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
