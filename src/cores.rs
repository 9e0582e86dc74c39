//! How many threads this process runs at once: `std::thread::available_parallelism`, asked
//! once per process. std answers from the CPU affinity and the cgroup's CPU quota, reading
//! `/proc/self/cgroup` and `/proc/self/mountinfo` on every call (~70 µs here), and a build
//! asks in several places (the context's walk, the export's compression).

use std::sync::OnceLock;

/// The number of cores this process may use (at least 1).
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_is_stds_and_stays() {
        let std = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(super::cores(), std);
        assert_eq!(super::cores(), std);
    }
}
