//! What clients may write to a consumer group's streams (`$group:G…`, see
//! `strata_engine::system`): only the group protocol's event types for that stream, and for
//! the protocol's own events a JSON object as data. Parked events carry the original data
//! as it was (any bytes). The protocol itself lives in `strata-client`; the node only keeps
//! its streams well-formed.

use strata_engine::system::GroupPart;
use strata_proto::v1 as pb;
use tonic::Status;

use crate::status::invalid;

/// Checks the events of an append to group stream `stream` (`part` of it); `prefix` names
/// the request's field path (`""` or `streams[i].`).
pub fn check_events(
    part: GroupPart,
    stream: &str,
    prefix: &str,
    events: &[pb::NewEvent],
) -> Result<(), Status> {
    let allowed = part.event_types();
    for (i, e) in events.iter().enumerate() {
        if !allowed.contains(&e.r#type.as_str()) {
            return Err(invalid(
                &format!("{prefix}events[{i}].type"),
                format!(
                    "`{}` is not an event of `{stream}` (one of {})",
                    e.r#type,
                    allowed.join(", ")
                ),
            ));
        }
        if matches!(part, GroupPart::Parked | GroupPart::Retry) {
            continue;
        }
        let object = serde_json::from_slice::<serde_json::Value>(&e.data)
            .map(|v| v.is_object())
            .unwrap_or(false);
        if !object {
            return Err(invalid(
                &format!("{prefix}events[{i}].data"),
                format!("a `{}` event's data is a JSON object", e.r#type),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str, data: &str) -> pb::NewEvent {
        pb::NewEvent {
            r#type: t.into(),
            data: data.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_protocols_events_go_into_group_streams() {
        let p = GroupPart::Partition(3);
        assert!(check_events(
            p,
            "$group:g/p/3",
            "",
            &[ev("$group-commit", "{\"after\":1}")]
        )
        .is_ok());
        let wrong = check_events(p, "$group:g/p/3", "", &[ev("Placed", "{}")]).unwrap_err();
        assert!(
            wrong.message().contains("events[0].type"),
            "{}",
            wrong.message()
        );
        let not_json = check_events(
            p,
            "$group:g/p/3",
            "streams[1].",
            &[ev("$group-claim", "[1]")],
        )
        .unwrap_err();
        assert!(not_json.message().contains("streams[1].events[0].data"));
        // Parked events keep the original bytes.
        assert!(check_events(
            GroupPart::Parked,
            "$group:g/parked",
            "",
            &[ev("$group-parked", "\u{1}")]
        )
        .is_ok());
    }
}
