//! Patches as the API server applies them: strategic merge patch (by each list's merge key) and
//! JSON merge patch.

use super::*;

/// The merge key of the lists in Pod and Node status (Kubernetes' `patchMergeKey`); other
/// lists are replaced.
pub(super) fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" | "addresses" => Some("type"),
        "containerStatuses" | "initContainerStatuses" | "ephemeralContainerStatuses" => {
            Some("name")
        }
        "podIPs" | "hostIPs" => Some("ip"),
        _ => None,
    }
}

pub(super) fn is_directive(value: &Value, directive: &str) -> bool {
    value.get("$patch").and_then(Value::as_str) == Some(directive)
}

/// A Kubernetes strategic merge patch: maps merge, `null` deletes, lists with a merge key
/// merge by it, other lists are replaced; `$patch`, `$setElementOrder/`,
/// `$deleteFromPrimitiveList/` and `$retainKeys` directives are honoured.
pub(super) fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if is_directive(patch, "replace") {
        let mut replacement = patch_map.clone();
        replacement.remove("$patch");
        *target = Value::Null;
        strategic_merge(target, &Value::Object(replacement));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    for (field, value) in patch_map {
        if field.starts_with('$') {
            continue;
        }
        if value.is_null() || is_directive(value, "delete") {
            map.remove(field);
            continue;
        }
        match (value, merge_key(field)) {
            (Value::Array(items), Some(key)) => {
                merge_list(map.entry(field.clone()).or_insert(Value::Null), items, key);
            }
            (Value::Object(_), _) => {
                strategic_merge(map.entry(field.clone()).or_insert(Value::Null), value);
            }
            _ => {
                map.insert(field.clone(), clean(value));
            }
        }
    }
    for (directive, value) in patch_map {
        if let Some(field) = directive.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (map.get_mut(field), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
        } else if let Some(field) = directive.strip_prefix("$setElementOrder/") {
            if let (Some(Value::Array(list)), Some(order)) = (map.get_mut(field), value.as_array())
            {
                reorder(list, order, merge_key(field));
            }
        } else if directive == "$retainKeys"
            && let Some(keep) = value.as_array()
        {
            map.retain(|field, _| keep.iter().any(|k| k.as_str() == Some(field)));
        }
    }
}

/// A patch value without directives.
pub(super) fn clean(value: &Value) -> Value {
    match value {
        Value::Object(_) => {
            let mut out = Value::Null;
            strategic_merge(&mut out, value);
            out
        }
        Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
        other => other.clone(),
    }
}

pub(super) fn merge_list(target: &mut Value, items: &[Value], key: &str) {
    let keyed = items
        .iter()
        .all(|item| item.get(key).is_some_and(|k| !k.is_null()));
    if !keyed {
        *target = Value::Array(
            items
                .iter()
                .filter(|item| !is_directive(item, "delete"))
                .map(clean)
                .collect(),
        );
        return;
    }
    let old = match target.take() {
        Value::Array(list) => list,
        _ => Vec::new(),
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, item) in old.iter().enumerate() {
        if let Some(k) = item.get(key) {
            index.entry(k.to_string()).or_insert(i);
        }
    }
    let mut slots: Vec<Option<Value>> = old.into_iter().map(Some).collect();
    for item in items {
        let id = item[key].to_string();
        if is_directive(item, "delete") {
            if let Some(i) = index.remove(&id)
                && let Some(slot) = slots.get_mut(i)
            {
                *slot = None;
            }
            continue;
        }
        match index.get(&id).and_then(|&i| slots.get_mut(i)) {
            Some(Some(existing)) => strategic_merge(existing, item),
            _ => {
                index.insert(id, slots.len());
                slots.push(Some(clean(item)));
            }
        }
    }
    *target = Value::Array(slots.into_iter().flatten().collect());
}

/// Orders `list` as `order` says (by merge key, or by value for lists of scalars); items not
/// named keep their relative order after the named ones.
pub(super) fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let id = |item: &Value| match key {
        Some(key) => item.get(key).map(Value::to_string),
        None => Some(item.to_string()),
    };
    let position: HashMap<String, usize> = order
        .iter()
        .enumerate()
        .filter_map(|(i, item)| id(item).map(|id| (id, i)))
        .collect();
    list.sort_by_key(|item| {
        id(item)
            .and_then(|id| position.get(&id).copied())
            .unwrap_or(usize::MAX)
    });
}

/// A JSON merge patch (RFC 7386).
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(map) = target.as_object_mut() {
        for (field, value) in patch_map {
            if value.is_null() {
                map.remove(field);
            } else {
                merge_patch(map.entry(field.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
