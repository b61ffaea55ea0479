//! Relations over REST, ThingsBoard's paths and shapes (§4.6): create, delete (one, or all of
//! an entity's), get one, list from or to an entity (with names: `/info`), in both the
//! query-string forms and the path forms newer clients use. Creating or deleting needs write
//! access to both ends; a list leaves out relations whose other end the caller may not read.

use actix_web::{HttpResponse, web};
use actors::directory::{
    EntityRef, MAX_FIELD_CHARS, MAX_RELATION_INFO_BYTES, Relation, RelationKey, TYPE_GROUPS,
};
use actors::model::validate_name;
use serde::Deserialize;
use serde_json::{Value, json};

use super::access::Op;
use super::entity::{IdBody, entity_ref, info_json, info_text_within, ref_json};
use super::error::ApiError;
use super::{Caller, State};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/relation", web::post().to(save))
        .route("/api/v2/relation", web::post().to(save_v2))
        .route("/api/relation", web::delete().to(delete))
        .route("/api/v2/relation", web::delete().to(delete_v2))
        .route("/api/relation", web::get().to(get))
        .route("/api/relations", web::delete().to(delete_all))
        .route("/api/relations", web::get().to(list))
        .route("/api/relations/info", web::get().to(list_info))
        .route(
            "/api/relations/info/{direction}/{entityType}/{entityId}",
            web::get().to(path_info),
        )
        .route(
            "/api/relations/{direction}/{entityType}/{entityId}",
            web::get().to(path_list),
        )
        .route(
            "/api/relations/{direction}/{entityType}/{entityId}/{relationType}",
            web::get().to(path_list_typed),
        );
}

fn relation_json(r: &Relation) -> Value {
    json!({
        "from": ref_json(r.key.from),
        "to": ref_json(r.key.to),
        "type": r.key.relation_type,
        "typeGroup": r.key.type_group,
        "additionalInfo": info_json(r.additional_info.as_deref()),
    })
}

fn type_group(group: Option<&str>) -> Result<String, ApiError> {
    match group.filter(|g| !g.is_empty()) {
        None => Ok("COMMON".into()),
        Some(g) if TYPE_GROUPS.contains(&g) => Ok(g.to_owned()),
        Some(g) => Err(ApiError::bad_request(format!(
            "Invalid relationTypeGroup: {g:?} (one of {})",
            TYPE_GROUPS.join(", ")
        ))),
    }
}

fn relation_type(t: Option<&str>) -> Result<String, ApiError> {
    let t = t
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("Relation type should be specified!"))?;
    validate_name("relation type", t, MAX_FIELD_CHARS)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(t.to_owned())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RelationBody {
    from: Option<IdBody>,
    to: Option<IdBody>,
    #[serde(rename = "type")]
    relation_type: Option<String>,
    type_group: Option<String>,
    #[serde(default)]
    additional_info: Option<Box<serde_json::value::RawValue>>,
}

async fn saved(state: &State, caller: &Caller, body: RelationBody) -> Result<Relation, ApiError> {
    let missing = || ApiError::bad_request("Relation should have both 'from' and 'to' entities!");
    let from = body.from.as_ref().ok_or_else(missing)?.entity()?;
    let to = body.to.as_ref().ok_or_else(missing)?.entity()?;
    let key = RelationKey {
        from,
        to,
        relation_type: relation_type(body.relation_type.as_deref())?,
        type_group: type_group(body.type_group.as_deref())?,
    };
    let additional_info = info_text_within(body.additional_info, MAX_RELATION_INFO_BYTES)?;
    let access = state.access();
    access.entity(&caller.0, from, Op::Write).await?;
    access.entity(&caller.0, to, Op::Write).await?;
    let relation = Relation {
        tenant_id: caller.0.tenant_id,
        customer_id: caller.0.customer_id.filter(|_| !caller.0.is_tenant_admin()),
        key,
        additional_info,
    };
    state.directory.save_relation(relation.clone()).await?;
    Ok(relation)
}

/// `POST /api/relation`: 200 with no body.
async fn save(
    state: State,
    caller: Caller,
    body: web::Json<RelationBody>,
) -> Result<HttpResponse, ApiError> {
    saved(&state, &caller, body.into_inner()).await?;
    Ok(HttpResponse::Ok().finish())
}

/// `POST /api/v2/relation`: the saved relation.
async fn save_v2(
    state: State,
    caller: Caller,
    body: web::Json<RelationBody>,
) -> Result<HttpResponse, ApiError> {
    let relation = saved(&state, &caller, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(relation_json(&relation)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyQuery {
    from_id: Option<String>,
    from_type: Option<String>,
    to_id: Option<String>,
    to_type: Option<String>,
    relation_type: Option<String>,
    relation_type_group: Option<String>,
}

fn required<'a>(name: &str, v: &'a Option<String>) -> Result<&'a str, ApiError> {
    v.as_deref().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Required request parameter '{name}' is not present"
        ))
    })
}

impl KeyQuery {
    fn key(&self) -> Result<RelationKey, ApiError> {
        Ok(RelationKey {
            from: entity_ref(
                required("fromType", &self.from_type)?,
                required("fromId", &self.from_id)?,
            )?,
            to: entity_ref(
                required("toType", &self.to_type)?,
                required("toId", &self.to_id)?,
            )?,
            relation_type: relation_type(Some(required("relationType", &self.relation_type)?))?,
            type_group: type_group(self.relation_type_group.as_deref())?,
        })
    }
}

/// The relation a query names, if the caller may do `op` on both its ends; else 404.
async fn existing(
    state: &State,
    caller: &Caller,
    query: &KeyQuery,
    op: Op,
) -> Result<Relation, ApiError> {
    let key = query.key()?;
    let access = state.access();
    access.entity(&caller.0, key.from, op).await?;
    access.entity(&caller.0, key.to, op).await?;
    state
        .directory
        .relation(&key)
        .ok_or_else(ApiError::not_found)
}

/// Deletes the relation a query names, if the caller may write both ends; returns it.
async fn removed(state: &State, caller: &Caller, query: &KeyQuery) -> Result<Relation, ApiError> {
    let relation = existing(state, caller, query, Op::Write).await?;
    state.directory.delete_relation(&relation.key).await?;
    Ok(relation)
}

/// `DELETE /api/relation?..`: 200 with no body.
async fn delete(
    state: State,
    caller: Caller,
    query: web::Query<KeyQuery>,
) -> Result<HttpResponse, ApiError> {
    removed(&state, &caller, &query).await?;
    Ok(HttpResponse::Ok().finish())
}

/// `DELETE /api/v2/relation?..`: the deleted relation.
async fn delete_v2(
    state: State,
    caller: Caller,
    query: web::Query<KeyQuery>,
) -> Result<HttpResponse, ApiError> {
    let relation = removed(&state, &caller, &query).await?;
    Ok(HttpResponse::Ok().json(relation_json(&relation)))
}

async fn get(
    state: State,
    caller: Caller,
    query: web::Query<KeyQuery>,
) -> Result<HttpResponse, ApiError> {
    let relation = existing(&state, &caller, &query, Op::Read).await?;
    Ok(HttpResponse::Ok().json(relation_json(&relation)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntityQuery {
    entity_id: String,
    entity_type: String,
}

/// `DELETE /api/relations?entityId=&entityType=`: every `COMMON` relation of the entity.
async fn delete_all(
    state: State,
    caller: Caller,
    query: web::Query<EntityQuery>,
) -> Result<HttpResponse, ApiError> {
    let entity = entity_ref(&query.entity_type, &query.entity_id)?;
    state.access().entity(&caller.0, entity, Op::Write).await?;
    state
        .directory
        .delete_relations_of(entity, Some("COMMON"))
        .await?;
    Ok(HttpResponse::Ok().finish())
}

/// One end and the direction a list asks for.
struct ListAsk {
    entity: EntityRef,
    outgoing: bool,
    relation_type: Option<String>,
    type_group: String,
}

impl KeyQuery {
    fn list_ask(&self) -> Result<ListAsk, ApiError> {
        let (entity, outgoing) = match (&self.from_id, &self.to_id) {
            (Some(id), _) => (
                entity_ref(required("fromType", &self.from_type)?, id)?,
                true,
            ),
            (None, Some(id)) => (entity_ref(required("toType", &self.to_type)?, id)?, false),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "Required request parameter 'fromId' or 'toId' is not present",
                ));
            }
        };
        Ok(ListAsk {
            entity,
            outgoing,
            relation_type: self.relation_type.clone().filter(|t| !t.is_empty()),
            type_group: type_group(self.relation_type_group.as_deref())?,
        })
    }
}

/// The relations asked for that the caller may read, each with the other end's name.
async fn listed(
    state: &State,
    caller: &Caller,
    ask: ListAsk,
) -> Result<Vec<(Relation, String)>, ApiError> {
    let access = state.access();
    access.entity(&caller.0, ask.entity, Op::Read).await?;
    let mut out = Vec::new();
    for r in state.directory.relations(
        ask.entity,
        ask.outgoing,
        &ask.type_group,
        ask.relation_type.as_deref(),
    ) {
        let other = if ask.outgoing { r.key.to } else { r.key.from };
        if let Some(name) = access.readable_name(&caller.0, other).await {
            out.push((r, name));
        }
    }
    Ok(out)
}

fn list_json(found: Vec<(Relation, String)>) -> HttpResponse {
    HttpResponse::Ok().json(
        found
            .iter()
            .map(|(r, _)| relation_json(r))
            .collect::<Vec<_>>(),
    )
}

/// `fromName` or `toName`, whichever end is the other one (as ThingsBoard fills only that).
fn info_list_json(found: Vec<(Relation, String)>, outgoing: bool) -> HttpResponse {
    let data: Vec<Value> = found
        .iter()
        .map(|(r, name)| {
            let mut v = relation_json(r);
            v[if outgoing { "toName" } else { "fromName" }] = json!(name);
            v
        })
        .collect();
    HttpResponse::Ok().json(data)
}

/// `GET /api/relations?fromId=&fromType=[&relationType=&relationTypeGroup=]`, or the
/// `toId`/`toType` form.
async fn list(
    state: State,
    caller: Caller,
    query: web::Query<KeyQuery>,
) -> Result<HttpResponse, ApiError> {
    let ask = query.list_ask()?;
    Ok(list_json(listed(&state, &caller, ask).await?))
}

async fn list_info(
    state: State,
    caller: Caller,
    query: web::Query<KeyQuery>,
) -> Result<HttpResponse, ApiError> {
    let ask = query.list_ask()?;
    let outgoing = ask.outgoing;
    Ok(info_list_json(
        listed(&state, &caller, ask).await?,
        outgoing,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupQuery {
    relation_type_group: Option<String>,
}

fn path_ask(
    direction: &str,
    kind: &str,
    id: &str,
    relation_type: Option<String>,
    group: &GroupQuery,
) -> Result<ListAsk, ApiError> {
    let outgoing = match direction {
        "from" => true,
        "to" => false,
        _ => return Err(ApiError::no_such_resource()),
    };
    Ok(ListAsk {
        entity: entity_ref(kind, id)?,
        outgoing,
        relation_type,
        type_group: type_group(group.relation_type_group.as_deref())?,
    })
}

/// `GET /api/relations/{from|to}/{entityType}/{entityId}` (newer clients).
async fn path_list(
    state: State,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    query: web::Query<GroupQuery>,
) -> Result<HttpResponse, ApiError> {
    let (direction, kind, id) = path.into_inner();
    let ask = path_ask(&direction, &kind, &id, None, &query)?;
    Ok(list_json(listed(&state, &caller, ask).await?))
}

/// `GET /api/relations/{from|to}/{entityType}/{entityId}/{relationType}`.
async fn path_list_typed(
    state: State,
    caller: Caller,
    path: web::Path<(String, String, String, String)>,
    query: web::Query<GroupQuery>,
) -> Result<HttpResponse, ApiError> {
    let (direction, kind, id, relation_type) = path.into_inner();
    let ask = path_ask(&direction, &kind, &id, Some(relation_type), &query)?;
    Ok(list_json(listed(&state, &caller, ask).await?))
}

/// `GET /api/relations/info/{from|to}/{entityType}/{entityId}`.
async fn path_info(
    state: State,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    query: web::Query<GroupQuery>,
) -> Result<HttpResponse, ApiError> {
    let (direction, kind, id) = path.into_inner();
    let ask = path_ask(&direction, &kind, &id, None, &query)?;
    let outgoing = ask.outgoing;
    Ok(info_list_json(
        listed(&state, &caller, ask).await?,
        outgoing,
    ))
}
