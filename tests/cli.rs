//! The `kvstore` command-line tool against the real server: outputs, exit
//! codes, the prompt, and the bulk loader.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{cli_path, Server};
use kvstore_client::BlockingClient;

fn kvstore(server: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(cli_path())
        .arg("--addr")
        .arg(server)
        .args(args)
        .env_remove("KVSTORE_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvstore");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn commands_print_their_results_and_exit_with_the_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &["--max-key", "16"]);
    let addr = server.addr.to_string();

    let out = kvstore(&addr, &["set", "greeting", "hello"], b"");
    assert_eq!((code(&out), text(&out.stdout)), (0, "OK\n".into()));
    // Piped: the raw value, no newline.
    let out = kvstore(&addr, &["get", "greeting"], b"");
    assert_eq!((code(&out), out.stdout.as_slice()), (0, &b"hello"[..]));
    // A binary value through standard input.
    let value = [0u8, 255, 10, 13, 0];
    assert_eq!(code(&kvstore(&addr, &["set", "bin", "-"], &value)), 0);
    assert_eq!(kvstore(&addr, &["get", "bin"], b"").stdout, value);

    let out = kvstore(&addr, &["exists", "greeting"], b"");
    assert_eq!(text(&out.stdout), "true\n");
    let out = kvstore(&addr, &["del", "greeting"], b"");
    assert_eq!(text(&out.stdout), "true\n");
    let out = kvstore(&addr, &["del", "greeting"], b"");
    assert_eq!(text(&out.stdout), "false\n");

    // Missing key: nothing on stdout, a message on stderr, exit 1.
    let out = kvstore(&addr, &["get", "greeting"], b"");
    assert_eq!(code(&out), 1);
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("not found"));

    for i in 0..5 {
        kvstore(&addr, &["set", &format!("user:{i}"), "x"], b"");
    }
    let out = kvstore(&addr, &["keys", "user:"], b"");
    assert_eq!(
        text(&out.stdout),
        "user:0\nuser:1\nuser:2\nuser:3\nuser:4\n"
    );
    let out = kvstore(&addr, &["keys", "user:", "--limit", "2"], b"");
    assert_eq!(text(&out.stdout), "user:0\nuser:1\n");

    // JSON output, binary values base64-encoded.
    let out = kvstore(&addr, &["--output", "json", "get", "bin"], b"");
    assert_eq!(
        text(&out.stdout),
        "{\"key\":\"bin\",\"value\":{\"base64\":\"AP8KDQA=\"}}\n"
    );
    let out = kvstore(
        &addr,
        &["--output", "json", "keys", "user:", "--limit", "1"],
        b"",
    );
    assert_eq!(text(&out.stdout), "{\"keys\":[\"user:0\"]}\n");

    // Usage error: 2. Server error (key over the limit): 4.
    assert_eq!(code(&kvstore(&addr, &["set", "only-key"], b"")), 2);
    let out = kvstore(&addr, &["set", "a-key-longer-than-16", "v"], b"");
    assert_eq!(code(&out), 4);
    assert!(
        text(&out.stderr).contains("exceeds the limit"),
        "{}",
        text(&out.stderr)
    );
}

/// Each of the string commands from the shell: what it prints and its exit.
#[test]
fn string_commands_print_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let addr = server.addr.to_string();
    let run = |args: &[&str]| {
        let out = kvstore(&addr, args, b"");
        (code(&out), text(&out.stdout))
    };
    let said = |code: i32, stdout: &str| (code, stdout.to_string());

    assert_eq!(run(&["incr", "n"]), said(0, "1\n"));
    assert_eq!(run(&["incr", "n", "10"]), said(0, "11\n"));
    assert_eq!(run(&["decr", "n"]), said(0, "10\n"));
    assert_eq!(run(&["decr", "n", "-5"]), said(0, "15\n"));
    assert_eq!(run(&["incr", "n", "-20"]), said(0, "-5\n"));
    assert_eq!(run(&["append", "s", "ab"]), said(0, "2\n"));
    assert_eq!(run(&["append", "s", "cd"]), said(0, "4\n"));
    assert_eq!(run(&["set", "s", "x", "--if-absent"]), said(0, "false\n"));
    assert_eq!(run(&["set", "t", "x", "--if-present"]), said(0, "false\n"));
    assert_eq!(run(&["set", "t", "x", "--if-absent"]), said(0, "true\n"));
    assert_eq!(run(&["set", "t", "y", "--if-present"]), said(0, "true\n"));
    assert_eq!(run(&["getset", "t", "z"]), said(0, "y"));
    assert_eq!(run(&["getset", "fresh", "1"]), said(0, ""));
    assert_eq!(run(&["getdel", "t"]), said(0, "z"));
    assert_eq!(run(&["getdel", "t"]), said(1, ""));
    assert_eq!(run(&["mset", "a", "1", "b", "2"]), said(0, "OK\n"));
    assert_eq!(
        run(&["mset", "a", "1", "b"]).0,
        2,
        "an odd mset is a usage error"
    );
    assert_eq!(run(&["mget", "a", "b"]), said(0, "1\n2\n"));
    assert_eq!(run(&["mget", "a", "nope", "b"]), said(1, "1\n\n2\n"));
    let out = kvstore(&addr, &["--output", "json", "incr", "n"], b"");
    assert_eq!(text(&out.stdout), "{\"key\":\"n\",\"value\":-4}\n");
    assert_eq!(run(&["del", "a", "b", "nope"]), said(0, "2\n"));
    assert_eq!(run(&["del", "s"]), said(0, "true\n"));

    // Revisions: a line before the value; JSON fields.
    assert_eq!(run(&["set", "v", "1"]).0, 0);
    assert_eq!(run(&["set", "v", "2"]).0, 0);
    let (status, stdout) = run(&["get", "--version", "v"]);
    let (line, value) = stdout.split_once('\n').unwrap();
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        (status, words[0], words[2], value),
        (0, "modified", "created", "2")
    );
    let (modified, created): (u64, u64) = (words[1].parse().unwrap(), words[3].parse().unwrap());
    assert!(modified > created && created > 0, "{line}");
    let out = kvstore(&addr, &["--output", "json", "get", "--version", "v"], b"");
    let json = format!(
        "{{\"created\":{created},\"key\":\"v\",\"modified\":{modified},\"value\":\"2\"}}\n"
    );
    assert_eq!(text(&out.stdout), json);
    assert_eq!(run(&["get", "--version", "nope"]), said(1, ""));

    // A transaction from standard input: compare-and-swap on `v`'s
    // revision, then the same again, which no longer holds (exit 1).
    let swap = format!("if v mod = {modified}\nthen set v 3\nthen incr n\nelse get v\n");
    let out = kvstore(&addr, &["txn"], swap.as_bytes());
    assert_eq!(
        (code(&out), text(&out.stdout)),
        (0, "succeeded\nOK\n-3\n".into())
    );
    let out = kvstore(&addr, &["--output", "json", "txn"], swap.as_bytes());
    let json = "{\"replies\":[\"3\"],\"succeeded\":false}\n";
    assert_eq!((code(&out), text(&out.stdout)), (1, json.into()));
    let out = kvstore(&addr, &["txn"], b"then frob v\n");
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));

    // Flush: refused without a terminal unless --yes.
    let out = kvstore(&addr, &["flush"], b"y\n");
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert_eq!(run(&["exists", "n"]), said(0, "true\n"));
    assert_eq!(run(&["flush", "--yes"]), said(0, "OK\n"));
    assert_eq!(run(&["exists", "n"]), said(0, "false\n"));
}

/// The expiry commands from the shell.
#[test]
fn expiry_commands_print_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let addr = server.addr.to_string();
    let run = |args: &[&str]| {
        let out = kvstore(&addr, args, b"");
        (code(&out), text(&out.stdout))
    };
    let ms_left = |key: &str| run(&["ttl", key]).1.trim().parse::<i64>().unwrap();
    assert_eq!(run(&["set", "s", "v", "--ttl", "1h"]), (0, "OK\n".into()));
    assert!((3_500_000..=3_600_000).contains(&ms_left("s")));
    let at = run(&["ttl", "s", "--at"]).1.trim().parse::<u64>().unwrap();
    assert!(at > 1_700_000_000_000, "{at}");
    let set_if = run(&["set", "s", "w", "--if-present", "--ttl", "90s"]);
    assert_eq!(set_if, (0, "true\n".into()));
    assert!((80_000..=90_000).contains(&ms_left("s")));
    assert_eq!(run(&["persist", "s"]), (0, "true\n".into()));
    assert_eq!(run(&["ttl", "s"]), (0, "-1\n".into()));
    assert_eq!(run(&["persist", "s"]), (0, "false\n".into()));
    let later = run(&["expire", "s", "10m", "--when", "has-deadline"]);
    assert_eq!(later, (0, "false\n".into()));
    assert_eq!(run(&["expire", "s", "10m"]), (0, "true\n".into()));
    assert_eq!(run(&["expire", "missing", "10m"]), (0, "false\n".into()));
    assert_eq!(run(&["ttl", "missing"]).0, 1);
    assert_eq!(run(&["set", "s", "v", "--ttl", "1y"]).0, 2, "unknown unit");
    assert_eq!(run(&["set", "short", "v", "--ttl", "1ms"]).0, 0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(run(&["get", "short"]).0, 1, "gone once its time passed");
}

/// Completion scripts need no server and name the commands.
#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = kvstore("127.0.0.1:1", &["completions", shell], b"");
        assert_eq!(code(&out), 0, "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains("getdel") && script.contains("mset"),
            "{shell}: {script}"
        );
    }
}

#[test]
fn an_unreachable_server_exits_3() {
    // Port 1: below the ephemeral range, so no server of a test running
    // beside this one can be listening there (a port found free and let go
    // could be taken meanwhile: this test once read a key from one).
    let out = kvstore("127.0.0.1:1", &["--timeout-ms", "300", "get", "k"], b"");
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
}

#[test]
fn the_prompt_runs_commands_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let out = kvstore(
        &server.addr.to_string(),
        &[],
        b"set \"two words\" \"a value\"\nget \"two words\"\nexists nope\nbogus\nquit\n",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("a value"), "{stdout}");
    assert!(stdout.contains("false"), "{stdout}");
    assert!(
        text(&out.stderr).contains("unrecognized subcommand"),
        "{}",
        text(&out.stderr)
    );
}

fn write_rows(path: &Path, rows: u32, format: &str) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..rows {
        match format {
            "csv" => writeln!(out, "key:{i:07},\"value, {i}\"").unwrap(),
            "tsv" => writeln!(out, "key:{i:07}\tvalue, {i}").unwrap(),
            _ => writeln!(out, "{{\"key\":\"key:{i:07}\",\"value\":\"value, {i}\"}}").unwrap(),
        }
    }
}

/// 100,000 rows from each format, read back.
#[test]
fn the_loader_reads_csv_tsv_and_json_lines() {
    for format in ["csv", "tsv", "jsonl"] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("kvstore.db"), &[]);
        let file = dir.path().join(format!("rows.{format}"));
        write_rows(&file, 100_000, format);
        let out = kvstore(
            &server.addr.to_string(),
            &["load", file.to_str().unwrap()],
            b"",
        );
        assert_eq!(code(&out), 0, "{format}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("loaded 100000 rows"),
            "{}",
            text(&out.stdout)
        );

        let client = BlockingClient::connect(server.addr.to_string()).unwrap();
        assert_eq!(client.keys("key:").count(), 100_000, "{format}");
        for i in [0u32, 1, 4242, 99_999] {
            let value = client.get(format!("key:{i:07}")).unwrap();
            assert_eq!(
                value.as_deref(),
                Some(format!("value, {i}").as_bytes()),
                "{format} row {i}"
            );
        }
        // Loading the same file again leaves the same state.
        assert_eq!(
            code(&kvstore(
                &server.addr.to_string(),
                &["load", file.to_str().unwrap()],
                b""
            )),
            0
        );
        assert_eq!(client.keys("key:").count(), 100_000);
    }
}

#[test]
fn json_values_that_are_not_strings_are_stored_as_json_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let input = b"{\"key\":\"m\",\"value\":{\"a\":[1,2]}}\n{\"key\":\"n\",\"value\":7}\n";
    let out = kvstore(
        &server.addr.to_string(),
        &["load", "--format", "jsonl", "-"],
        input,
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    assert_eq!(
        client.get("m").unwrap().as_deref(),
        Some(&b"{\"a\":[1,2]}"[..])
    );
    assert_eq!(client.get("n").unwrap().as_deref(), Some(&b"7"[..]));
}

#[test]
fn a_malformed_line_stops_the_load_with_its_number_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let addr = server.addr.to_string();
    let input = b"a,1\nb,2\nc,3\nd,4\ne,5,extra\nf,6\n";

    let out = kvstore(&addr, &["load", "-"], input);
    assert_eq!(code(&out), 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 5"), "{stderr}");
    assert!(stderr.contains("4 acknowledged rows"), "{stderr}");
    let client = BlockingClient::connect(addr.clone()).unwrap();
    assert!(client.exists("d").unwrap());
    assert!(!client.exists("f").unwrap());

    let out = kvstore(&addr, &["load", "--skip-bad", "-"], input);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 malformed lines skipped"),
        "{}",
        text(&out.stdout)
    );
    assert!(client.exists("f").unwrap());
    assert!(!client.exists("e").unwrap());

    let out = kvstore(
        &addr,
        &["load", "--format", "jsonl", "-"],
        b"{\"key\":\"x\",\"value\":\"1\"}\n{\"key\":2}\n",
    );
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );
}

/// Rows the server refuses (a key over its limit) stop the load with a server
/// error (4), saying how many rows were acknowledged, and the reader stops
/// instead of reading the rest of the input.
#[test]
fn rows_the_server_refuses_stop_the_load_with_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &["--max-key", "16"]);
    let file = dir.path().join("rows.csv");
    let mut rows = String::new();
    for i in 0..50_000 {
        let key = if i == 20_000 {
            "k".repeat(40)
        } else {
            format!("k{i}")
        };
        rows.push_str(&format!("{key},v\n"));
    }
    std::fs::write(&file, rows).unwrap();
    let out = kvstore(
        &server.addr.to_string(),
        &["load", "--batch-rows", "1000", file.to_str().unwrap()],
        b"",
    );
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("exceeds the limit") && stderr.contains("acknowledged"),
        "{stderr}"
    );
}

#[test]
fn watch_prints_each_change_from_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let addr = server.addr.to_string();
    let client = BlockingClient::connect(&addr).unwrap();
    client.set("w/a", "one two").unwrap();
    client.set("elsewhere", "x").unwrap();
    client.delete("w/a").unwrap();
    client.set("w/b", "line\nbreak").unwrap();
    let first = client.get_with_version("w/b").unwrap().unwrap().modified - 3;

    let from = first.to_string();
    let out = kvstore(
        &addr,
        &["watch", "w/", "--from", &from, "--count", "3"],
        b"",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let expected = format!(
        "{} put w/a one two\n{} del w/a\n{} put w/b line\\nbreak\n",
        first,
        first + 2,
        first + 3
    );
    assert_eq!(text(&out.stdout), expected);

    let args = [
        "--output", "json", "watch", "w/b", "--from", &from, "--count", "1",
    ];
    let out = kvstore(&addr, &args, b"");
    let line = format!(
        "{{\"deadline\":null,\"key\":\"w/b\",\"kind\":\"put\",\"revision\":{},\"value\":\"line\\nbreak\"}}\n",
        first + 3
    );
    assert_eq!(text(&out.stdout), line);

    // Older than the history: an error, exit 4.
    let args = ["watch", "", "--from", "1"];
    let quiet = Server::start(&dir.path().join("other.db"), &["--watch-history-mb", "0"]);
    BlockingClient::connect(quiet.addr.to_string())
        .unwrap()
        .set("k", "v")
        .unwrap();
    let out = kvstore(&quiet.addr.to_string(), &args, b"");
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("compacted"),
        "{}",
        text(&out.stderr)
    );
}

/// `kvstore watch` waits out a restart of its server (longer than the
/// client's usual few attempts) and goes on from where it was.
#[test]
fn watch_goes_on_across_a_restart() {
    use std::io::BufRead;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let server = Server::start(&data, &[]);
    let addr = server.addr.to_string();
    // From revision 1: the first change is seen even if it comes before
    // the watch is in place.
    let mut watch = Command::new(cli_path())
        .args([
            "--addr", &addr, "watch", "w/", "--from", "1", "--count", "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Its lines as they come, so that every wait below is bounded.
    let (lines, printed) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || stdout.lines().for_each(|l| drop(lines.send(l))));
    let next = || printed.recv_timeout(Duration::from_secs(30));
    BlockingClient::connect(&addr)
        .unwrap()
        .set("w/a", "1")
        .unwrap();
    assert!(next().unwrap().unwrap().ends_with("put w/a 1"));
    server.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let _server = Server::start_on(&addr, &data, &[]);
    BlockingClient::connect(&addr)
        .unwrap()
        .set("w/b", "2")
        .unwrap();
    let second = next();
    let _ = watch.kill();
    let status = watch.wait().unwrap();
    assert!(
        second
            .as_ref()
            .is_ok_and(|l| l.as_ref().is_ok_and(|l| l.ends_with("put w/b 2"))),
        "{second:?}, {status}"
    );
}
