//! Sagas on the log: saga types ([`definition`]), the journal a saga's stream holds
//! ([`journal`]), its state as the journal's fold ([`state`]) and the orchestrator's next
//! decision as a pure function of that state and the time ([`decide`]); the journal in the
//! store ([`store`]), the orchestrator's loop ([`orchestrator`]) and a participant's command
//! handling ([`participant`]); the HTTP API ([`service`]).

pub mod decide;
pub mod definition;
pub mod journal;
pub mod orchestrator;
pub mod participant;
pub mod service;
pub mod state;
pub mod store;

#[cfg(test)]
mod tests;
