//! The SAM template's EventBridge Scheduler schedules, one per cron
//! trigger, and the role they invoke the function with.
//!
//! They live between two marker comments under `Resources:`, written the
//! same way every time from sandstorm.json, so writing again changes
//! nothing and everything outside the markers (the function, the table,
//! hand edits) is left as it was. Each schedule:
//!
//! - `ScheduleExpression`: the trigger's schedule in EventBridge's cron
//!   ([`crate::triggers::eventbridge`]), read in `ScheduleExpressionTimezone`,
//!   the trigger's zone;
//! - `FlexibleTimeWindow`: `OFF`, or `FLEXIBLE` for the trigger's jitter
//!   (its whole minutes, rounded up);
//! - `Target`: the function, with an input that names the trigger and asks
//!   for EventBridge's scheduled time, execution id and attempt number,
//!   which the Lambda door turns into a detached run; a `RetryPolicy` for
//!   deliveries that fail.
//!
//! The role trusts `scheduler.amazonaws.com` (from this account only) and
//! may `lambda:InvokeFunction` on the function, nothing else.

use std::collections::BTreeMap;

use super::{CronTrigger, Written, cron_triggers};
use crate::triggers::Definition;
use crate::triggers::eventbridge;

/// The line that opens the schedules.
pub const BEGIN: &str = "  # BEGIN ds schedules";
/// The line that closes them.
pub const END: &str = "  # END ds schedules";
/// The function the schedules invoke, unless told otherwise: the
/// repository's template's.
pub const DEFAULT_FUNCTION: &str = "SandstormFunction";
/// The role EventBridge Scheduler assumes.
pub const ROLE: &str = "SandstormScheduleRole";
/// What each schedule's logical id starts with.
pub const SCHEDULE_PREFIX: &str = "SandstormSchedule";

/// How long EventBridge Scheduler keeps trying to deliver a fire: past it,
/// the Lambda door would count the fire missed anyway.
const MAX_EVENT_AGE_SECS: u32 = 600;
/// How many times it tries again within that.
const MAX_RETRIES: u32 = 5;

/// One resource of the block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resource {
    id: String,
    /// Its lines, without the block's comments.
    text: String,
}

/// `template` with its schedules made from `definitions`, invoking the
/// function `function` (a logical id of the template).
pub fn write(
    template: &str,
    definitions: &[Definition],
    function: &str,
) -> Result<Written, String> {
    let resources = resources(&cron_triggers(definitions), function)?;
    check_function(template, function)?;
    let block = render(&resources, &cron_triggers(definitions));
    let lines: Vec<&str> = template.lines().collect();
    let text = match find_block(&lines)? {
        Some((begin, end)) => {
            let mut out: Vec<&str> = lines[..begin].to_vec();
            out.extend(block.lines());
            out.extend(&lines[end + 1..]);
            out.join("\n") + "\n"
        }
        None => insert(&lines, &block)?,
    };
    Ok(Written {
        text,
        notes: Vec::new(),
    })
}

/// What differs between `template`'s schedules and those `definitions`
/// make, one line each; empty when they match.
pub fn check(
    template: &str,
    definitions: &[Definition],
    function: &str,
) -> Result<Vec<String>, String> {
    let triggers = cron_triggers(definitions);
    let wanted = resources(&triggers, function)?;
    check_function(template, function)?;
    let lines: Vec<&str> = template.lines().collect();
    let Some((begin, end)) = find_block(&lines)? else {
        return Ok(if wanted.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "there are no schedules (no `{}` line): sandstorm.json has {} cron trigger(s)",
                BEGIN.trim(),
                triggers.len()
            )]
        });
    };
    let found = parse_block(&lines[begin + 1..end]);
    let mut differences = Vec::new();
    for resource in &wanted {
        match found.get(&resource.id) {
            None => differences.push(format!("{} is missing", describe(&resource.id))),
            Some(text) if *text != resource.text => {
                let mut difference = format!("{} differs:", describe(&resource.id));
                let have: Vec<&str> = text.lines().collect();
                let want: Vec<&str> = resource.text.lines().collect();
                for line in &have {
                    if !want.contains(line) {
                        difference.push_str(&format!("\n    - {}", line.trim()));
                    }
                }
                for line in &want {
                    if !have.contains(line) {
                        difference.push_str(&format!("\n    + {}", line.trim()));
                    }
                }
                differences.push(difference);
            }
            Some(_) => {}
        }
    }
    for id in found.keys() {
        if !wanted.iter().any(|r| &r.id == id) {
            differences.push(format!(
                "{id} is not one sandstorm.json makes (a trigger removed, or renamed?)"
            ));
        }
    }
    Ok(differences)
}

fn describe(id: &str) -> String {
    if id == ROLE {
        format!("{id} (the role the schedules invoke the function with)")
    } else {
        id.to_owned()
    }
}

/// A schedule's logical id: the prefix and the trigger's name in camel
/// case (`daily-digest` is `SandstormScheduleDailyDigest`).
fn schedule_id(name: &str) -> String {
    let mut id = SCHEDULE_PREFIX.to_owned();
    for part in name.split(['-', '_']) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

fn resources(triggers: &[CronTrigger<'_>], function: &str) -> Result<Vec<Resource>, String> {
    if !function.chars().all(|c| c.is_ascii_alphanumeric()) || function.is_empty() {
        return Err(format!(
            "{function:?} is not a logical id: letters and digits only"
        ));
    }
    if triggers.is_empty() {
        return Ok(Vec::new());
    }
    let mut resources = vec![Resource {
        id: ROLE.to_owned(),
        text: role(function),
    }];
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    for trigger in triggers {
        let expression = eventbridge::expression(trigger.schedule)
            .map_err(|why| format!("trigger {:?}: {why}", trigger.name))?;
        let id = schedule_id(trigger.name);
        if let Some(other) = names.insert(id.clone(), trigger.name) {
            return Err(format!(
                "triggers {other:?} and {:?} would both be the schedule {id}; rename one",
                trigger.name
            ));
        }
        resources.push(Resource {
            text: schedule(&id, trigger, &expression, function),
            id,
        });
    }
    Ok(resources)
}

fn role(function: &str) -> String {
    format!(
        "  {ROLE}:
    Type: AWS::IAM::Role
    Properties:
      Description: EventBridge Scheduler invokes the function for sandstorm.json's cron triggers
      AssumeRolePolicyDocument:
        Version: \"2012-10-17\"
        Statement:
          - Effect: Allow
            Principal:
              Service: scheduler.amazonaws.com
            Action: sts:AssumeRole
            Condition:
              StringEquals:
                aws:SourceAccount: !Ref AWS::AccountId
      Policies:
        - PolicyName: invoke-function
          PolicyDocument:
            Version: \"2012-10-17\"
            Statement:
              - Effect: Allow
                Action: lambda:InvokeFunction
                Resource: !GetAtt {function}.Arn
"
    )
}

fn schedule(id: &str, trigger: &CronTrigger<'_>, expression: &str, function: &str) -> String {
    let window = match eventbridge::window_minutes(trigger.jitter) {
        None => "        Mode: \"OFF\"\n".to_owned(),
        Some(minutes) => {
            format!("        Mode: FLEXIBLE\n        MaximumWindowInMinutes: {minutes}\n")
        }
    };
    format!(
        "  {id}:
    Type: AWS::Scheduler::Schedule
    Properties:
      Description: sandstorm.json cron trigger {name}
      ScheduleExpression: \"{expression}\"
      ScheduleExpressionTimezone: {zone}
      FlexibleTimeWindow:
{window}      Target:
        Arn: !GetAtt {function}.Arn
        RoleArn: !GetAtt {ROLE}.Arn
        Input: '{input}'
        RetryPolicy:
          MaximumEventAgeInSeconds: {MAX_EVENT_AGE_SECS}
          MaximumRetryAttempts: {MAX_RETRIES}
",
        name = trigger.name,
        zone = trigger.schedule.zone().name(),
        input = eventbridge::input(trigger.name),
    )
}

/// The block, markers and all.
fn render(resources: &[Resource], triggers: &[CronTrigger<'_>]) -> String {
    let mut block = format!(
        "{BEGIN}: made from sandstorm.json's cron triggers by `ds schedules --sam`; edit\n  \
         # sandstorm.json and run it again (`ds schedules --sam --check` fails while they differ).\n"
    );
    if resources.is_empty() {
        block.push_str("  # (sandstorm.json has no cron triggers)\n");
    }
    for resource in resources {
        block.push('\n');
        if let Some(trigger) = triggers.iter().find(|t| schedule_id(t.name) == resource.id) {
            block.push_str(&format!(
                "  # {}: {} in {}\n",
                trigger.name,
                trigger.schedule.expression(),
                trigger.schedule.zone().name()
            ));
        }
        block.push_str(&resource.text);
    }
    block.push_str(END);
    block.push('\n');
    block
}

/// The lines of the markers, if the template has them.
fn find_block(lines: &[&str]) -> Result<Option<(usize, usize)>, String> {
    let begin = lines.iter().position(|l| l.starts_with(BEGIN));
    let end = lines.iter().position(|l| l.trim_end() == END);
    match (begin, end) {
        (None, None) => Ok(None),
        (Some(begin), Some(end)) if begin < end => Ok(Some((begin, end))),
        _ => Err(format!(
            "the template's `{}` and `{}` lines are not a pair; fix or remove them",
            BEGIN.trim(),
            END.trim()
        )),
    }
}

/// The resources of an existing block, by id, their comments and blank
/// lines left out.
fn parse_block(lines: &[&str]) -> BTreeMap<String, String> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in lines {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 2
            && let Some(id) = trimmed.trim_end().strip_suffix(':')
        {
            current = Some(id.to_owned());
            found.insert(id.to_owned(), format!("{line}\n"));
            continue;
        }
        if let Some(text) = current.as_ref().and_then(|id| found.get_mut(id)) {
            text.push_str(line);
            text.push('\n');
        }
    }
    found
}

/// `lines` with `block` at the end of `Resources:`.
fn insert(lines: &[&str], block: &str) -> Result<String, String> {
    let resources = lines
        .iter()
        .position(|l| l.trim_end() == "Resources:")
        .ok_or("the template has no `Resources:` section")?;
    // The section ends at the next line that starts in column 0.
    let mut end = lines[resources + 1..]
        .iter()
        .position(|l| l.chars().next().is_some_and(|c| !c.is_whitespace()))
        .map_or(lines.len(), |n| resources + 1 + n);
    while end > resources + 1 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    let mut out: Vec<&str> = lines[..end].to_vec();
    out.push("");
    out.extend(block.lines());
    if end < lines.len() {
        out.push("");
    }
    out.extend(lines[end..].iter().skip_while(|l| l.trim().is_empty()));
    Ok(out.join("\n") + "\n")
}

/// Fails unless the template has the function the schedules invoke.
fn check_function(template: &str, function: &str) -> Result<(), String> {
    let declared = format!("  {function}:");
    if template.lines().any(|l| l.trim_end() == declared) {
        Ok(())
    } else {
        Err(format!(
            "the template has no resource {function} for the schedules to invoke \
             (--function names the function's logical id)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TEMPLATE: &str = include_str!("../../template.yaml");

    fn definitions(triggers: &serde_json::Value) -> Vec<Definition> {
        crate::triggers::definition::parse(triggers.as_array().expect("a list")).expect("valid")
    }

    /// `template` without its block, and with one blank line where there
    /// were several.
    fn outside(template: &str) -> String {
        let mut inside = false;
        let mut kept: Vec<&str> = Vec::new();
        for line in template.lines() {
            if line.starts_with(BEGIN) {
                inside = true;
            } else if line == END {
                inside = false;
            } else if inside || (line.is_empty() && kept.last() == Some(&"")) {
                continue;
            } else {
                kept.push(line);
            }
        }
        kept.join("\n")
    }

    fn digest() -> Vec<Definition> {
        definitions(&json!([
            {"name": "daily-digest", "type": "cron", "schedule": "0 9 * * MON-FRI",
             "timezone": "Europe/Prague", "prompt": "Write the digest", "jitter": 90},
            {"name": "hook", "type": "webhook", "path": "/hook", "public": true, "prompt": "p"},
            {"name": "hourly", "type": "cron", "schedule": "0 * * * *", "prompt": "Tick"}
        ]))
    }

    #[test]
    fn each_cron_trigger_is_a_schedule_and_writing_again_changes_nothing() {
        let written = write(TEMPLATE, &digest(), DEFAULT_FUNCTION).expect("written");
        let text = &written.text;
        assert!(text.contains("  SandstormScheduleDailyDigest:\n"), "{text}");
        assert!(text.contains("  SandstormScheduleHourly:\n"), "{text}");
        assert!(!text.contains("Hook"), "a webhook has no schedule");
        assert!(text.contains("ScheduleExpression: \"cron(0 9 ? * MON-FRI *)\""));
        assert!(text.contains("ScheduleExpressionTimezone: Europe/Prague"));
        assert!(text.contains("ScheduleExpressionTimezone: UTC"));
        assert!(text.contains("Mode: FLEXIBLE\n        MaximumWindowInMinutes: 2\n"));
        assert!(text.contains("Mode: \"OFF\""));
        assert!(
            text.contains(r#""sandstorm_trigger":"daily-digest""#),
            "{text}"
        );
        // Only the block changed: everything around it is as it was.
        assert_eq!(outside(text), outside(TEMPLATE));
        assert_eq!(
            write(text, &digest(), DEFAULT_FUNCTION)
                .expect("again")
                .text,
            *text
        );
        assert_eq!(check(text, &digest(), DEFAULT_FUNCTION), Ok(Vec::new()));
    }

    #[test]
    fn a_template_without_the_block_gets_it_at_the_end_of_its_resources() {
        let bare = "Resources:\n  SandstormFunction:\n    Type: AWS::Serverless::Function\n\nOutputs:\n  X:\n    Value: 1\n";
        let written = write(bare, &digest(), DEFAULT_FUNCTION)
            .expect("written")
            .text;
        let block = written.find(BEGIN).expect("a block");
        let outputs = written.find("\nOutputs:").expect("outputs");
        assert!(block < outputs, "{written}");
        assert!(written.starts_with(
            "Resources:\n  SandstormFunction:\n    Type: AWS::Serverless::Function\n\n  # BEGIN"
        ));
        assert!(
            written.ends_with("  # END ds schedules\n\nOutputs:\n  X:\n    Value: 1\n"),
            "{written}"
        );
        assert_eq!(check(&written, &digest(), DEFAULT_FUNCTION), Ok(Vec::new()));
        // With no cron triggers, no block is no difference.
        assert_eq!(check(bare, &[], DEFAULT_FUNCTION), Ok(Vec::new()));
    }

    #[test]
    fn a_hand_edit_outside_the_block_survives_and_one_inside_is_named() {
        let written = write(TEMPLATE, &digest(), DEFAULT_FUNCTION)
            .expect("written")
            .text;
        let edited = written
            .replace(
                "      MemorySize: !Ref MemorySize\n",
                "      MemorySize: 2048\n",
            )
            .replace("cron(0 9 ? * MON-FRI *)", "cron(0 10 ? * MON-FRI *)");
        let differences = check(&edited, &digest(), DEFAULT_FUNCTION).expect("checked");
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(
            differences[0].contains("SandstormScheduleDailyDigest differs")
                && differences[0].contains("- ScheduleExpression: \"cron(0 10 ? * MON-FRI *)\"")
                && differences[0].contains("+ ScheduleExpression: \"cron(0 9 ? * MON-FRI *)\""),
            "{differences:?}"
        );
        let rewritten = write(&edited, &digest(), DEFAULT_FUNCTION)
            .expect("again")
            .text;
        assert!(rewritten.contains("      MemorySize: 2048\n"));
        assert!(rewritten.contains("cron(0 9 ? * MON-FRI *)"));
        // A trigger gone from sandstorm.json: its schedule is named.
        let fewer = definitions(&json!([
            {"name": "hourly", "type": "cron", "schedule": "0 * * * *", "prompt": "Tick"}
        ]));
        let differences = check(&written, &fewer, DEFAULT_FUNCTION).expect("checked");
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(differences[0].starts_with("SandstormScheduleDailyDigest is not one"));
        // And with none at all, the role goes too.
        let none = write(&written, &[], DEFAULT_FUNCTION)
            .expect("emptied")
            .text;
        assert!(!none.contains(ROLE), "{none}");
        assert!(none.contains("(sandstorm.json has no cron triggers)"));
    }

    #[test]
    fn what_cannot_be_a_schedule_is_refused_naming_the_trigger() {
        let both = definitions(&json!([
            {"name": "odd", "type": "cron", "schedule": "0 9 1 * MON", "prompt": "p"}
        ]));
        let error = write(TEMPLATE, &both, DEFAULT_FUNCTION).expect_err("both day fields");
        assert!(
            error.contains("\"odd\"") && error.contains("day of the week"),
            "{error}"
        );
        let clash = definitions(&json!([
            {"name": "a-b", "type": "cron", "schedule": "0 9 * * *", "prompt": "p"},
            {"name": "a_b", "type": "cron", "schedule": "0 9 * * *", "prompt": "p"}
        ]));
        let error = write(TEMPLATE, &clash, DEFAULT_FUNCTION).expect_err("same id");
        assert!(error.contains("SandstormScheduleAB"), "{error}");
        let error = write(TEMPLATE, &digest(), "Elsewhere").expect_err("no such function");
        assert!(error.contains("Elsewhere"), "{error}");
    }
}
