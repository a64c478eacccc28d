//! The recipes of docs/recipes.md, run as written against a real server:
//! each block marked `<!-- recipe:NAME -->` is a bash script whose
//! `kvstore` is the CLI built here and whose `KVSTORE_ADDR` is the
//! server's, and it must exit 0 (its `test` lines are the checks).

mod common;

use std::process::Command;

use common::{cli_path, Server};

/// The script of each recipe in docs/recipes.md, by name.
fn recipes() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/recipes.md")).unwrap();
    let mut recipes = Vec::new();
    let mut rest = doc.as_str();
    while let Some(at) = rest.find("<!-- recipe:") {
        let after = &rest[at + "<!-- recipe:".len()..];
        let name = &after[..after.find(" -->").unwrap()];
        let block = &after[after.find("```sh\n").unwrap() + "```sh\n".len()..];
        let script = &block[..block.find("```").unwrap()];
        recipes.push((name.to_string(), script.to_string()));
        rest = block;
    }
    recipes
}

#[test]
fn every_recipe_runs_as_written() {
    let recipes = recipes();
    let names: Vec<&str> = recipes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["lock", "leader", "config"]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let bin = cli_path();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (name, script) in recipes {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("PATH", &path)
            .env("KVSTORE_ADDR", server.addr.to_string())
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "recipe {name} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
