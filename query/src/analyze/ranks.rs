//! Exact order statistics of durations held in blocks, without copying or sorting them: one pass
//! counts the durations per log-linear bucket (the value's leading bit and the seven after it:
//! 3,328 buckets, each within 1/128 of its values), which names the bucket each wanted rank falls
//! in and its place there; a second pass gathers just those buckets' durations and selects.
//! Memory: the counts and the gathered buckets (a few hundred thousand values at most for a
//! realistic spread; every value in the worst case, when they are all alike). Sorting a copy of
//! every group's durations was 13 % of an `analyze` and its largest memory.

/// Values below this are a bucket each.
const EXACT: u32 = 256;
/// Mantissa bits kept per power of two above [`EXACT`].
const MANTISSA: u32 = 7;
const BUCKETS: usize = EXACT as usize + (32 - 8) * (1 << MANTISSA);

/// The bucket of `value`: monotonic in `value`.
#[inline]
fn bucket(value: u32) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let exponent = 31 - value.leading_zeros();
    let mantissa = (value >> (exponent - MANTISSA)) & ((1 << MANTISSA) - 1);
    EXACT as usize + ((exponent - 8) << MANTISSA) as usize + mantissa as usize
}

/// The values at `ranks` (0-based, each below the number of values) of the values in `blocks`,
/// in ascending order of value; in the order `ranks` are given.
pub fn select(blocks: &[&[u32]], ranks: &[usize]) -> Vec<u32> {
    let mut counts = vec![0u64; BUCKETS];
    for block in blocks {
        for &value in *block {
            counts[bucket(value)] += 1;
        }
    }
    // Each rank's bucket and its place among that bucket's values.
    let mut starts = vec![0u64; BUCKETS];
    let mut total = 0;
    for (start, count) in starts.iter_mut().zip(&counts) {
        *start = total;
        total += count;
    }
    let places: Vec<(usize, usize)> = ranks
        .iter()
        .map(|&rank| {
            let rank = rank as u64;
            let at = starts.partition_point(|&start| start <= rank) - 1;
            (at, (rank - starts[at]) as usize)
        })
        .collect();
    let mut wanted: Vec<usize> = places.iter().map(|(at, _)| *at).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut gathered: Vec<Vec<u32>> = vec![Vec::new(); wanted.len()];
    let mut slot = vec![usize::MAX; BUCKETS];
    for (index, &at) in wanted.iter().enumerate() {
        slot[at] = index;
        gathered[index].reserve_exact(counts[at] as usize);
    }
    for block in blocks {
        for &value in *block {
            let index = slot[bucket(value)];
            if index != usize::MAX {
                gathered[index].push(value);
            }
        }
    }
    places
        .iter()
        .map(|&(at, place)| {
            let values = &mut gathered[slot[at]];
            *values.select_nth_unstable(place).1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_with_their_values() {
        let mut values: Vec<u32> = (0..32)
            .flat_map(|shift| [1u32 << shift, (1u32 << shift) + 1, (3u32 << shift) / 2])
            .chain((0..600).chain([u32::MAX - 1, u32::MAX]))
            .collect();
        values.sort_unstable();
        for pair in values.windows(2) {
            assert!(bucket(pair[0]) <= bucket(pair[1]), "buckets of {pair:?}");
        }
        assert_eq!(bucket(u32::MAX), BUCKETS - 1);
        assert_eq!(bucket(255), 255);
        assert_eq!(bucket(256), 256);
    }

    #[test]
    fn every_rank_is_the_sorted_values_rank() {
        // Values spread over many powers of two, repeated values, split into uneven blocks.
        let values: Vec<u32> = (0..50_000u64)
            .map(|i| ((i * 2_654_435_761) % 1_000_003) as u32 >> (i % 13))
            .chain([0, 0, u32::MAX, 7, 7, 7])
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let (a, b) = values.split_at(12_345);
        let (b, c) = b.split_at(1);
        let ranks: Vec<usize> = [0, 1, 2, 100, 25_000, 49_999, 50_005]
            .into_iter()
            .chain((0..values.len()).step_by(997))
            .collect();
        let selected = select(&[a, b, c, &[]], &ranks);
        let expected: Vec<u32> = ranks.iter().map(|&r| sorted[r]).collect();
        assert_eq!(selected, expected);
    }
}
