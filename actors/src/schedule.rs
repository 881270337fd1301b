//! Which proxies to build next: the snapshot actor's scheduling decisions as plain code, tested without a
//! runtime. One batch builds at a time; whatever turns dirty meanwhile is merged and built next (no fixed
//! debounce); proxies with no configuration yet go first; a failed batch, or failed proxies, come back.

use std::collections::BTreeSet;

use messages::{Dirty, ProxyUuid};

#[derive(Debug, Default)]
pub struct Schedule {
    pending: Dirty,
    building: bool,
}

impl Schedule {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what must be rebuilt.
    pub fn mark(&mut self, dirty: Dirty) {
        let pending = std::mem::take(&mut self.pending);
        self.pending = pending.merge(dirty);
    }

    pub fn is_building(&self) -> bool {
        self.building
    }

    /// Nothing is being built and nothing waits to be.
    pub fn is_idle(&self) -> bool {
        !self.building && self.pending == Dirty::Nothing
    }

    /// Starts the next batch unless one is running: the pending proxies that are still `connected` (all of
    /// `everyone`, enumerated only then, for [`Dirty::All`]), those without configuration (`waiting`)
    /// first. `None` when there is nothing to do; the pending set is then empty or kept for after the
    /// running batch. Costs the size of the batch: a connect storm starts many small batches, and none of
    /// them may walk every connected proxy.
    pub fn start<'a, I: IntoIterator<Item = &'a ProxyUuid>>(
        &mut self,
        everyone: impl FnOnce() -> I,
        connected: impl Fn(&ProxyUuid) -> bool,
        waiting: impl Fn(&ProxyUuid) -> bool,
    ) -> Option<Vec<ProxyUuid>> {
        if self.building {
            return None;
        }
        let (mut first, rest): (Vec<ProxyUuid>, Vec<ProxyUuid>) = match std::mem::take(&mut self.pending) {
            Dirty::Nothing => return None,
            Dirty::All => everyone().into_iter().filter(|u| connected(u)).cloned().partition(|u| waiting(u)),
            Dirty::Proxies(set) => set.into_iter().filter(|u| connected(u)).partition(|u| waiting(u)),
        };
        if first.is_empty() && rest.is_empty() {
            return None;
        }
        first.extend(rest);
        self.building = true;
        Some(first)
    }

    /// The running batch finished; its `failed` proxies are to be retried (the caller decides when, then
    /// marks them).
    pub fn finished(&mut self) {
        self.building = false;
    }

    /// The running batch could not be built at all: all of it is pending again.
    pub fn failed(&mut self, batch: BTreeSet<ProxyUuid>) {
        self.building = false;
        self.mark(Dirty::Proxies(batch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> ProxyUuid {
        ProxyUuid::parse(s).unwrap()
    }

    fn set(v: &[&str]) -> BTreeSet<ProxyUuid> {
        v.iter().map(|s| u(s)).collect()
    }

    /// Starts a batch with `connected` the connected proxies; sorts each group (waiting, then the rest) so
    /// that the assertions do not depend on the order of `everyone`.
    fn start(
        s: &mut Schedule,
        connected: &[ProxyUuid],
        waiting: impl Fn(&ProxyUuid) -> bool,
    ) -> Option<Vec<ProxyUuid>> {
        let mut batch = s.start(|| connected.iter(), |p| connected.contains(p), &waiting)?;
        let split = batch.iter().take_while(|p| waiting(p)).count();
        assert!(batch[split..].iter().all(|p| !waiting(p)), "waiting proxies come first: {batch:?}");
        batch[..split].sort();
        batch[split..].sort();
        Some(batch)
    }

    #[test]
    fn one_batch_at_a_time_and_what_arrives_meanwhile_is_merged_into_the_next() {
        let connected = [u("a"), u("b"), u("c")];
        let mut s = Schedule::new();
        assert_eq!(start(&mut s, &connected, |_| false), None, "nothing pending");
        s.mark(Dirty::Proxies(set(&["a"])));
        assert_eq!(start(&mut s, &connected, |_| false), Some(vec![u("a")]));
        s.mark(Dirty::Proxies(set(&["b"])));
        s.mark(Dirty::Proxies(set(&["c"])));
        assert_eq!(start(&mut s, &connected, |_| false), None, "a batch is running");
        s.finished();
        assert_eq!(start(&mut s, &connected, |_| false), Some(vec![u("b"), u("c")]));
    }

    #[test]
    fn all_means_every_connected_proxy_and_departed_ones_are_skipped() {
        let mut s = Schedule::new();
        s.mark(Dirty::Proxies(set(&["gone", "b"])));
        s.mark(Dirty::All);
        assert_eq!(start(&mut s, &[u("a"), u("b")], |_| false), Some(vec![u("a"), u("b")]));
        s.finished();
        s.mark(Dirty::Proxies(set(&["gone"])));
        assert_eq!(start(&mut s, &[u("a")], |_| false), None);
        assert_eq!(start(&mut s, &[u("a")], |_| false), None, "and nothing is left pending");
    }

    #[test]
    fn proxies_without_config_go_first() {
        let mut s = Schedule::new();
        s.mark(Dirty::All);
        let batch = start(&mut s, &[u("a"), u("b"), u("c"), u("d")], |p| p == &u("c") || p == &u("d")).unwrap();
        assert_eq!(batch, vec![u("c"), u("d"), u("a"), u("b")]);
    }

    #[test]
    fn a_batch_of_some_proxies_does_not_enumerate_everyone() {
        let mut s = Schedule::new();
        s.mark(Dirty::Proxies(set(&["a", "gone"])));
        let everyone = || -> std::slice::Iter<'_, ProxyUuid> { panic!("a batch of named proxies walked everyone") };
        assert_eq!(s.start(everyone, |p| p == &u("a"), |_| true), Some(vec![u("a")]));
    }

    #[test]
    fn a_failed_batch_is_pending_again() {
        let mut s = Schedule::new();
        s.mark(Dirty::Proxies(set(&["a", "b"])));
        let batch = start(&mut s, &[u("a"), u("b")], |_| false).unwrap();
        s.failed(batch.into_iter().collect());
        assert!(!s.is_building());
        assert_eq!(start(&mut s, &[u("a"), u("b")], |_| false), Some(vec![u("a"), u("b")]));
    }
}
