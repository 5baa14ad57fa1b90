//! Enables the Salt parity tests (`cfg(salt_parity)`) when `CORPUS_SALT_CALL` names a
//! `salt-call`: a developer without Salt sees them as ignored with the reason, CI (which
//! installs Salt in `.ci/run` and exports the variable) runs them in the normal test run.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(salt_parity)");
    println!("cargo::rerun-if-env-changed=CORPUS_SALT_CALL");
    if std::env::var_os("CORPUS_SALT_CALL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=salt_parity");
    }
}
