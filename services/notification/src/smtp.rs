//! A minimal SMTP client (RFC 5321) for the email channel: one message per connection,
//! plain text, no TLS or authentication (a local relay). EHLO, MAIL FROM, RCPT TO, DATA
//! (dot-stuffed, CRLF line ends), QUIT; any reply outside 2xx/3xx where one is due fails the
//! delivery with the server's words. Each message carries its `Message-ID`, which a receiver
//! can deduplicate on.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line read, bytes.
const LINE_BYTES_MAX: usize = 4096;
/// Most lines of one (multi-line) reply.
const REPLY_LINES_MAX: usize = 64;

/// One message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The sender's address.
    pub from: String,
    /// The recipient's address.
    pub to: String,
    /// Its subject.
    pub subject: String,
    /// Its `Message-ID` (without the angle brackets).
    pub message_id: String,
    /// Its text.
    pub body: String,
}

/// Whether `address` can go on an SMTP command line: `local@domain`, printable ASCII, no
/// spaces or angle brackets.
pub fn plausible(address: &str) -> bool {
    address.len() <= 254
        && address
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && address
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

/// The message's text as DATA sends it: headers, a blank line, the body dot-stuffed, CRLF
/// line ends, the final dot.
fn data(mail: &Mail) -> String {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let mut out = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {}\r\nMessage-ID: <{}>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        mail.from,
        mail.to,
        clean(&mail.subject),
        clean(&mail.message_id)
    );
    for line in mail.body.lines() {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

/// Reads one reply (all its lines); its code.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<(u16, String), String> {
    let mut text = String::new();
    for _ in 0..REPLY_LINES_MAX {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if n == 0 || line.len() > LINE_BYTES_MAX {
            return Err("the server closed the connection or sent an overlong line".into());
        }
        text.push_str(&line);
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an SMTP reply: {line:?}"))?;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
    }
    Err("a reply of too many lines".into())
}

/// Sends `mail` through the server at `server` (`HOST:PORT`) within `deadline`.
pub async fn send(server: &str, mail: &Mail, deadline: Duration) -> Result<(), String> {
    if !plausible(&mail.from) || !plausible(&mail.to) {
        return Err(format!("not an address: {:?} or {:?}", mail.from, mail.to));
    }
    let exchange = async {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|e| format!("connecting to {server}: {e}"))?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let expect = |(code, text): (u16, String), want: std::ops::RangeInclusive<u16>| {
            if want.contains(&code) {
                Ok(())
            } else {
                Err(format!("the SMTP server said: {}", text.trim()))
            }
        };
        expect(reply(&mut read).await?, 220..=220)?;
        let steps: [(String, std::ops::RangeInclusive<u16>); 4] = [
            ("EHLO strata\r\n".into(), 250..=250),
            (format!("MAIL FROM:<{}>\r\n", mail.from), 250..=250),
            (format!("RCPT TO:<{}>\r\n", mail.to), 250..=251),
            ("DATA\r\n".into(), 354..=354),
        ];
        for (command, want) in steps {
            write
                .write_all(command.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            expect(reply(&mut read).await?, want)?;
        }
        write
            .write_all(data(mail).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        expect(reply(&mut read).await?, 250..=250)?;
        let _ = write.write_all(b"QUIT\r\n").await;
        Ok(())
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| format!("the SMTP server {server} did not finish within {deadline:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_dot_stuffed_with_crlf_and_headers_stay_one_line() {
        let m = Mail {
            from: "a@b".into(),
            to: "c@d".into(),
            subject: "hi\r\nBcc: x@y".into(),
            message_id: "n1@strata".into(),
            body: "line\n.dot\n".into(),
        };
        let d = data(&m);
        assert!(d.contains("Subject: hi  Bcc: x@y\r\n"), "{d}");
        assert!(d.contains("\r\n..dot\r\n.\r\n"), "{d}");
        assert!(d.contains("Message-ID: <n1@strata>\r\n"));
        assert!(plausible("orders@strata.local"));
        assert!(!plausible("no-at-sign") && !plausible("a b@c") && !plausible("<a@b>"));
    }
}
