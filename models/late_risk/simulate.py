"""Turns the food-delivery order table into the event streams a handset would send.

The order table (../shared/data/food-delivery/deliverytime.csv) has, per order: courier age
and rating, restaurant and customer coordinates, order and vehicle type, and the minutes the
delivery took. It has no timestamps and no GPS trace, so this script simulates them:

* order (= assignment) time: a date in the range of the Kaggle test split, and a clock time
  drawn from that split's real `Time_Orderd` values (local time, UTC+05:30);
* promise: assignment + 30 min (see MODEL_CARD.md for why);
* pickup: 5, 10 or 15 min after the order, the only gaps the raw table shows;
* the courier starts 0.3-2.5 km from the restaurant, reaches it before pickup, then rides to
  the customer, arriving one minute before the real delivery time; pings every ~60 s with GPS
  noise (8 m), occasional gaps (several missed pings) and rare jumps;
* status events: task_assigned, arrived_pickup, picked_up, arrived_dropoff, delivered.

Rows with a zero restaurant position are dropped (the true position is unknown); negative
restaurant coordinates are sign flips and are repaired with abs().

Output: events as JSON lines (the edge-host schema) and one row per task with its split and
ground truth. Deterministic for a given seed.
"""

import argparse
import csv
import datetime as dt
import json
import math
import random

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
PROMISE_MIN = 30
EARTH_KM = 6371.0088


def offset(lat, lon, km_north, km_east):
    dlat = km_north / EARTH_KM
    dlon = km_east / (EARTH_KM * math.cos(math.radians(lat)))
    return lat + math.degrees(dlat), lon + math.degrees(dlon)


def haversine_km(a, b):
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def lerp(a, b, f):
    return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f)


def order_clock_times(test_csv):
    """Real order clock times (seconds after midnight) and dates from the test split."""
    times, dates = [], []
    with open(test_csv, newline="") as f:
        for row in csv.DictReader(f):
            t = row["Time_Orderd"].strip()
            if t and t != "NaN":
                h, m, s = (int(x) for x in t.split(":"))
                times.append((h % 24) * 3600 + m * 60 + s)
            d, mth, y = (int(x) for x in row["Order_Date"].strip().split("-"))
            dates.append(dt.date(y, mth, d))
    return times, min(dates), max(dates)


def clean_orders(train_csv):
    with open(train_csv, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            rlat, rlon = abs(float(row["Restaurant_latitude"])), abs(float(row["Restaurant_longitude"]))
            dlat, dlon = abs(float(row["Delivery_location_latitude"])), abs(float(row["Delivery_location_longitude"]))
            if rlat < 1 or rlon < 1:
                continue
            rating = float(row["Delivery_person_Ratings"])
            yield {
                "row": i,
                # One courier id in the table is blank; such orders get a placeholder courier.
                "courier": row["Delivery_person_ID"].strip() or f"unknown-courier-{i}",
                "age": float(row["Delivery_person_Age"]),
                "rating": rating if rating <= 5 else None,
                "restaurant": (rlat, rlon),
                "customer": (dlat, dlon),
                "order_type": row["Type_of_order"].strip().lower(),
                "vehicle": row["Type_of_vehicle"].strip().lower(),
                "minutes": int(row["Time_taken(min)"]),
            }


def simulate(order, rng, clock_times, first_day, n_days):
    task = f"T{order['row']}"
    courier = order["courier"]
    day = first_day + dt.timedelta(days=rng.randrange(n_days))
    t0 = dt.datetime.combine(day, dt.time(), IST) + dt.timedelta(seconds=rng.choice(clock_times))
    total = order["minutes"] * 60
    pickup_at = rng.choice([g for g in (300, 600, 900) if g < total - 240] or [min(300, total // 3)])
    arrive_pickup_at = max(60, pickup_at - rng.randint(60, min(300, pickup_at - 30)))
    arrive_dropoff_at = total - 60
    bearing = rng.uniform(0, 2 * math.pi)
    start_km = rng.uniform(0.3, 2.5)
    start = offset(*order["restaurant"], start_km * math.cos(bearing), start_km * math.sin(bearing))
    # Progress along each leg is uneven: traffic makes some minutes slower than others.
    def progress(t, t_from, t_to):
        f = (t - t_from) / max(1, t_to - t_from)
        wobble = 0.08 * math.sin(f * math.pi * rng.uniform(1, 3))
        return min(1.0, max(0.0, f + wobble * f * (1 - f) * 4))

    def position(t):
        if t <= arrive_pickup_at:
            return lerp(start, order["restaurant"], progress(t, 0, arrive_pickup_at))
        if t <= pickup_at:
            return order["restaurant"]
        if t <= arrive_dropoff_at:
            return lerp(order["restaurant"], order["customer"], progress(t, pickup_at, arrive_dropoff_at))
        return order["customer"]

    leg_kmh = haversine_km(order["restaurant"], order["customer"]) / max(1e-6, (arrive_dropoff_at - pickup_at) / 3600)
    seq = 0
    events = []

    def emit(kind, t, pos=None, **extra):
        nonlocal seq
        seq += 1
        lat, lon = pos if pos is not None else position(t)
        e = {
            "event_id": f"{task}-{seq}",
            "courier_id": courier,
            "task_id": task,
            "event_type": kind,
            "event_time": (t0 + dt.timedelta(seconds=t)).isoformat(),
            "lat": round(lat, 6),
            "lon": round(lon, 6),
        }
        e.update({k: v for k, v in extra.items() if v is not None})
        events.append(e)

    emit(
        "task_assigned", 0, start,
        pickup={"lat": order["restaurant"][0], "lon": order["restaurant"][1]},
        dropoff={"lat": order["customer"][0], "lon": order["customer"][1]},
        promised_at=(t0 + dt.timedelta(minutes=PROMISE_MIN)).isoformat(),
        stops_remaining=0,
        order_type=order["order_type"],
        vehicle_type=order["vehicle"],
        courier_rating=order["rating"],
        courier_age=order["age"],
    )
    status = [(arrive_pickup_at, "arrived_pickup"), (pickup_at, "picked_up"), (arrive_dropoff_at, "arrived_dropoff")]
    t = rng.randint(20, 70)
    while t < total:
        while status and status[0][0] <= t:
            st, kind = status.pop(0)
            emit(kind, st)
        if rng.random() < 0.03:
            t += 60 * rng.randint(3, 8)  # a gap: pings lost
            continue
        lat, lon = position(t)
        if rng.random() < 0.005:  # a jump: a wild fix
            lat, lon = offset(lat, lon, rng.uniform(-2, 2), rng.uniform(-2, 2))
        else:
            lat, lon = offset(lat, lon, rng.gauss(0, 0.008), rng.gauss(0, 0.008))
        moving = pickup_at < t < arrive_dropoff_at
        speed = None if rng.random() < 0.2 else round(max(0.0, rng.gauss(leg_kmh if moving else 8, 3)), 1)
        emit("location", t, (lat, lon), speed_kmh=speed, accuracy_m=round(rng.uniform(4, 25), 1))
        t += rng.randint(50, 70)
    for st, kind in status:
        emit(kind, st)
    emit("delivered", total, order["customer"])
    late = order["minutes"] > PROMISE_MIN
    return task, events, late


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", required=True)
    ap.add_argument("--test-split", required=True, help="kaggle_test_raw.csv, for clock times and dates")
    ap.add_argument("--events", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--holdout", type=float, default=0.2)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    clock_times, first, last = order_clock_times(args.test_split)
    n_days = (last - first).days + 1
    n = 0
    with open(args.events, "w") as ev, open(args.tasks, "w", newline="") as tk:
        w = csv.writer(tk)
        w.writerow(["task_id", "split", "late", "minutes"])
        for order in clean_orders(args.orders):
            task, events, late = simulate(order, rng, clock_times, first, n_days)
            split = "test" if rng.random() < args.holdout else "train"
            w.writerow([task, split, int(late), order["minutes"]])
            for e in events:
                ev.write(json.dumps(e, separators=(",", ":")) + "\n")
            n += 1
    print(f"simulated {n} tasks")


if __name__ == "__main__":
    main()
