//! The README's five-minute tour, run command by command against a real server.
//!
//! The tour is the fenced block after the `<!-- tour -->` marker in README.md. Each line starting
//! with `herd ` runs as the binary (quotes are honoured); other lines are prose for people.

use test_support::TestServer;

use crate::{herd, stderr, stdout};

/// Splits a shell command line into words, honouring single and double quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn tour_commands() -> Vec<String> {
    let readme = include_str!("../../../../README.md");
    let start = readme.find("<!-- tour -->").expect("README has a <!-- tour --> marker");
    let block = &readme[start..];
    let open = block.find("```").expect("tour code block");
    let body = &block[open + 3..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("```").expect("tour block closes");
    body[..close]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("herd "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn shell_words_splits_like_a_shell() {
    assert_eq!(
        shell_words(r#"herd device list --filter "tags.site = 'berlin'""#),
        ["herd", "device", "list", "--filter", "tags.site = 'berlin'"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_tour_runs() {
    let server = TestServer::start().await;
    let commands = tour_commands();
    assert!(commands.len() >= 5, "the tour should show several commands, found {commands:?}");
    let env = [("HERD_URL", server.base_url.as_str()), ("HERD_TOKEN", server.admin_token.as_str())];
    for line in &commands {
        let words = shell_words(line);
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let out = tokio::task::block_in_place(|| herd(&args, &env));
        assert!(
            out.status.success(),
            "`{line}` failed:\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        );
    }
    server.stop().await;
}
