//! Reads: label and field selectors, list, and watch (replay from a resourceVersion, bookmarks,
//! `410 Gone`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::http::{ApiError, Query, Target, api_error, json_response};
use crate::{Change, Note, State, Store};

/// A label or field selector, as the API server parses it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector(Vec<Term>);

#[derive(Debug, Clone)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

impl Selector {
    pub(crate) fn parse(s: Option<&str>) -> Result<Self, String> {
        let Some(s) = s else { return Ok(Self::default()) };
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')'));
                let inner = inner.ok_or_else(|| format!("selector term {term:?}: expected a (list)"))?;
                Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
            };
            let t = if let Some((k, v)) = term.split_once("!=") {
                Term::Ne(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Term::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                Term::NotIn(k.trim().to_owned(), set(rest)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                Term::In(k.trim().to_owned(), set(rest)?)
            } else if let Some(k) = term.strip_prefix('!') {
                Term::Absent(k.trim().to_owned())
            } else if term.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Term::Exists(term.to_owned())
            } else {
                return Err(format!("unable to parse selector term {term:?}"));
            };
            terms.push(t);
        }
        Ok(Self(terms))
    }

    pub(crate) fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Eq(k, v) => get(k).as_deref() == Some(v),
            Term::Ne(k, v) => get(k).as_deref() != Some(v),
            Term::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Term::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
        })
    }
}

/// The list or watch filter of one request.
#[derive(Debug, Clone)]
struct Filter {
    resource: (String, String),
    namespace: String,
    labels: Selector,
    fields: Selector,
    /// The apiVersion objects are shown at (a custom resource is served at the version asked for).
    served_as: Option<String>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let str_at = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let ns = str_at("/metadata/namespace").unwrap_or_default();
        (self.namespace.is_empty() || ns == self.namespace)
            && self
                .labels
                .matches(|k| obj.pointer("/metadata/labels").and_then(|l| l.get(k))?.as_str().map(str::to_owned))
            && self.fields.matches(|k| match k {
                "metadata.name" => str_at("/metadata/name"),
                "metadata.namespace" => Some(ns.clone()),
                _ => None,
            })
    }

    fn show<'a>(&self, obj: &'a Value) -> std::borrow::Cow<'a, Value> {
        crate::http::served_as(self.served_as.as_deref(), obj)
    }
}

fn filter_of(store: &Store, target: &Target, query: &Query) -> Result<Filter, ApiError> {
    let bad = |e: String| api_error(StatusCode::BAD_REQUEST, "BadRequest", e);
    Ok(Filter {
        resource: target.resource.id(),
        namespace: target.namespace.clone(),
        labels: Selector::parse(query.label_selector.as_deref()).map_err(bad)?,
        fields: Selector::parse(query.field_selector.as_deref()).map_err(bad)?,
        served_as: store.crd(&target.resource.group, &target.resource.plural).map(|_| target.resource.api_version()),
    })
}

/// The objects of a collection a list or a delete of the collection names.
pub(crate) fn matching(store: &Store, target: &Target, query: &Query) -> Result<Vec<Arc<Value>>, ApiError> {
    let filter = filter_of(store, target, query)?;
    Ok(store.of_resource(&filter.resource).filter(|(_, v)| filter.matches(v)).map(|(_, v)| v.clone()).collect())
}

pub(crate) fn list(state: &State, target: &Target, query: &Query) -> Result<Value, ApiError> {
    let store = state.store();
    let filter = filter_of(&store, target, query)?;
    let items: Vec<Value> = store
        .of_resource(&filter.resource)
        .filter(|(_, v)| filter.matches(v))
        .map(|(_, v)| filter.show(v).into_owned())
        .collect();
    Ok(json!({
        "apiVersion": target.resource.api_version(),
        "kind": format!("{}List", store.kind(&target.resource)),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line
}

/// The event a filtered watch sees for one change: an object that stops matching is `DELETED` for it.
fn event_for(filter: &Filter, c: &Change) -> Option<String> {
    if c.resource != filter.resource {
        return None;
    }
    let old = c.old.as_deref().filter(|o| filter.matches(o));
    let new = c.new.as_deref().filter(|n| filter.matches(n));
    match (old, new) {
        (None, Some(n)) => Some(event_line("ADDED", &filter.show(n))),
        (Some(_), Some(n)) => Some(event_line("MODIFIED", &filter.show(n))),
        (Some(o), None) => Some(event_line("DELETED", &filter.show(c.new.as_deref().unwrap_or(o)))),
        (None, None) => None,
    }
}

fn gone_line(message: String) -> String {
    event_line("ERROR", &api_error(StatusCode::GONE, "Expired", message).body)
}

pub(crate) fn watch(state: &Arc<State>, target: &Target, query: &Query) -> Response {
    // Replay and subscription happen under the store's lock, so no change falls between them.
    let (filter, backlog, mut notes, mut last_rv, bookmark_envelope) = {
        let store = state.store();
        let filter = match filter_of(&store, target, query) {
            Ok(f) => f,
            Err(e) => return json_response(e.status, &e.body),
        };
        let notes = state.notes.subscribe();
        let envelope = (target.resource.api_version(), store.kind(&target.resource));
        let mut backlog = Vec::new();
        match query.resource_version.as_deref().map(str::parse::<u64>) {
            _ if query.send_initial_events => {
                // A watch-list: the current state as ADDED events, a bookmark marking their end, then what
                // follows.
                for (_, v) in store.of_resource(&filter.resource).filter(|(_, v)| filter.matches(v)) {
                    backlog.push(event_line("ADDED", &filter.show(v)));
                }
                backlog.push(event_line(
                    "BOOKMARK",
                    &json!({
                        "apiVersion": envelope.0, "kind": envelope.1,
                        "metadata": {
                            "resourceVersion": store.rv.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }),
                ));
            }
            None | Some(Ok(0)) => {
                // No resourceVersion: the current state as ADDED events, then what follows.
                for (_, v) in store.of_resource(&filter.resource).filter(|(_, v)| filter.matches(v)) {
                    backlog.push(event_line("ADDED", &filter.show(v)));
                }
            }
            Some(Ok(from)) => {
                let floor = store.floor(&filter.resource);
                if from < floor || from > store.rv {
                    backlog.push(gone_line(format!("too old resource version: {from} ({floor})")));
                    drop(store);
                    return stream_lines(backlog, None);
                }
                backlog.extend(store.history.iter().filter(|c| c.rv > from).filter_map(|c| event_for(&filter, c)));
            }
            Some(Err(_)) => {
                let e = api_error(StatusCode::BAD_REQUEST, "BadRequest", "resourceVersion is not a number");
                return json_response(e.status, &e.body);
            }
        }
        (filter, backlog, notes, store.rv, envelope)
    };
    let (tx, rx) = mpsc::channel::<Result<String, Infallible>>(64);
    let bookmarks = query.bookmarks;
    let interval = state.options.bookmark_interval;
    let deadline = query.timeout_s.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        loop {
            let line = tokio::select! {
                note = notes.recv() => match note {
                    Ok(Note::Change(c)) if c.rv > last_rv => {
                        last_rv = c.rv;
                        match event_for(&filter, &c) {
                            Some(line) => line,
                            None => continue,
                        }
                    }
                    Ok(Note::Change(_)) => continue,
                    Ok(Note::Expire(id)) if id == filter.resource => {
                        let _ = tx.send(Ok(gone_line(format!("too old resource version: {last_rv}")))).await;
                        return;
                    }
                    Ok(Note::Expire(_)) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(gone_line(format!("watch fell behind at {last_rv}")))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    // Every change reaches this loop in order, so `last_rv` is as far as this watch has seen.
                    let (api_version, kind) = &bookmark_envelope;
                    event_line("BOOKMARK", &json!({
                        "apiVersion": api_version, "kind": kind,
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    }))
                }
                () = &mut timeout => return,
                () = tx.closed() => return,
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    stream_lines(Vec::new(), Some(rx))
}

pub(crate) fn stream_lines(first: Vec<String>, rest: Option<mpsc::Receiver<Result<String, Infallible>>>) -> Response {
    use futures::StreamExt as _;
    let head = futures::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let tail = rest.map(tokio_stream::wrappers::ReceiverStream::new);
    let stream = head.chain(futures::stream::iter(tail).flatten());
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn selectors_match_like_the_api_server() {
        let labels: BTreeMap<&str, &str> = [("app", "web"), ("tier", "front")].into();
        let get = |k: &str| labels.get(k).map(|v| (*v).to_owned());
        let m = |s: &str| Selector::parse(Some(s)).unwrap().matches(get);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(m("app in (web, api),!missing"));
        assert!(!m("app notin (web)"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"));
        assert!(Selector::parse(Some("app in web")).is_err());
    }
}
