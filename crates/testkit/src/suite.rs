//! Checks on the behavioural suites themselves.

/// Asserts that a suite module lists every case it defines in its test
/// macro, and only those; returns how many cases it defines, for a floor the
/// caller checks.
///
/// A case missing from the macro would silently not run for any backend.
/// `source` is the module's text (`include_str!("testing.rs")`). Its cases
/// are the lines starting with `pub async fn `; the macro's list is the
/// `case_*` lines between the markers `// cases:begin` and `// cases:end`.
/// `macro_name` names the macro in the failure message.
///
/// ```
/// let source = r#"
/// macro_rules! my_tests {
///     () => { cases!(
///         // cases:begin
///         case_one,
///         // cases:end
///     ); };
/// }
/// pub async fn case_one(store: &()) {}
/// "#;
/// assert_eq!(sofiia_testkit::assert_every_case_listed(source, "my_tests!"), 1);
/// ```
///
/// # Panics
///
/// If a marker is missing, a defined case is not listed, or a listed case
/// is not defined.
pub fn assert_every_case_listed(source: &str, macro_name: &str) -> usize {
    let (_, listed) = source
        .split_once("// cases:begin")
        .expect("the macro marks its case list");
    let (listed, _) = listed.split_once("// cases:end").expect("the list ends");
    let listed: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("case_"))
        .map(|l| l.trim_end_matches(','))
        .collect();
    let defined: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .filter_map(|l| l.split_once('(').map(|(name, _)| name))
        .collect();
    for name in &defined {
        assert!(listed.contains(name), "{name} is not in {macro_name}");
    }
    for name in &listed {
        assert!(defined.contains(name), "{name} is listed but not defined");
    }
    defined.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: &str = "\
macro_rules! t {
    () => { cases!(
        // cases:begin
        case_a,
        case_b,
        // cases:end
    ); };
}
pub async fn case_a(s: &S) {}
pub async fn case_b(s: &S) {}
";

    #[test]
    fn counts_the_cases_of_a_complete_list() {
        assert_eq!(assert_every_case_listed(SUITE, "t!"), 2);
        assert_eq!(
            assert_every_case_listed("// cases:begin\n// cases:end\n", "t!"),
            0
        );
    }

    #[test]
    #[should_panic(expected = "case_c is not in t!")]
    fn an_unlisted_case_fails() {
        let source = format!("{SUITE}pub async fn case_c(s: &S) {{}}\n");
        assert_every_case_listed(&source, "t!");
    }

    #[test]
    #[should_panic(expected = "case_b is listed but not defined")]
    fn a_listed_case_that_does_not_exist_fails() {
        let source = SUITE.replace("pub async fn case_b", "async fn case_b");
        assert_every_case_listed(&source, "t!");
    }

    #[test]
    #[should_panic(expected = "the macro marks its case list")]
    fn a_missing_marker_fails() {
        assert_every_case_listed("pub async fn case_a() {}", "t!");
    }
}
