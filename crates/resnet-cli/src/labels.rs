//! ImageNet-1k class names, in torchvision's order.
//!
//! `imagenet_classes.txt` holds one name per line and was generated from
//! `torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]`
//! (torchvision 0.29), so index `i` names logit `i` of every torchvision
//! ImageNet-1k classifier.

use std::sync::OnceLock;

/// Number of ImageNet-1k classes.
pub const IMAGENET_CLASSES: usize = 1000;

const RAW: &str = include_str!("imagenet_classes.txt");

fn classes() -> &'static [&'static str] {
    static CLASSES: OnceLock<Vec<&'static str>> = OnceLock::new();
    CLASSES.get_or_init(|| RAW.lines().collect())
}

/// The class name for logit `index`, or `None` if `index >= 1000`.
pub fn imagenet_label(index: usize) -> Option<&'static str> {
    classes().get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_thousand_non_empty_unique_names() {
        let c = classes();
        assert_eq!(c.len(), IMAGENET_CLASSES);
        assert!(c.iter().all(|s| !s.is_empty() && s.trim() == *s));
        let unique: std::collections::HashSet<_> = c.iter().collect();
        assert_eq!(unique.len(), IMAGENET_CLASSES);
    }

    #[test]
    fn known_labels() {
        assert_eq!(imagenet_label(0), Some("tench"));
        assert_eq!(imagenet_label(1), Some("goldfish"));
        assert_eq!(imagenet_label(207), Some("golden retriever"));
        assert_eq!(imagenet_label(281), Some("tabby"));
        assert_eq!(imagenet_label(285), Some("Egyptian cat"));
        assert_eq!(imagenet_label(409), Some("analog clock"));
        assert_eq!(imagenet_label(999), Some("toilet tissue"));
        assert_eq!(imagenet_label(1000), None);
    }
}
